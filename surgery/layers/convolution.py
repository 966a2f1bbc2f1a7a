"""Convolution: Caffe's Convolution, torch's Conv1d / Conv2d / Conv3d (groups, dilation).

The spatial rank is the length of ``kernel`` (1, 2 or 3): a 1-D convolution over
``(N, C, L)``, a 2-D one over ``(N, C, H, W)``, a 3-D one over ``(N, C, T, H, W)`` (the
video backbones' convolutions). Caffe output writes the 2-D ones."""

from __future__ import annotations

from typing import Any

from surgery.errors import ModelFormatError, ShapeError, unsupported_in_caffe, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.layers import lora
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, known, pair, register_layer
from surgery.lazy_torch import nn, resolve_all, torch


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's and torch's convolution output size (floor)."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


@register_layer
class Convolution(LayerType):
    """Params: num_output, kernel, stride, pad, dilation (one value per spatial axis: 1 to
    3), group, bias_term. Blobs: weight [O, C/group, *kernel], bias [O]."""

    name = "Convolution"
    fresh_output = True
    torch_modules = ("torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d")
    blob_roles = ("weight", "bias")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        p = layer.params
        rank = len(p["kernel"])
        if shape is None or len(shape) != 2 + rank:
            raise ShapeError(f"a {rank}-D convolution expects a {2 + rank}-D input {_LAYOUTS[rank]}, got {shape}")
        channels = shape[1]
        if channels % p["group"] or p["num_output"] % p["group"]:
            raise ShapeError(
                f"group {p['group']} must divide input channels {channels} and num_output {p['num_output']}"
            )
        weight = layer.blobs.get("weight")
        if weight is not None and weight.shape[1] * p["group"] != channels:
            raise ShapeError(
                f"weight expects {weight.shape[1] * p['group']} input channels, the input has {channels}",
                fix="resize the layer that feeds it, or replace this layer",
            )
        out = [
            conv_output_size(shape[2 + i], p["kernel"][i], p["stride"][i], p["pad"][i], p["dilation"][i])
            for i in range(rank)
        ]
        if min(out) < 1:
            raise ShapeError(f"input {shape} is too small for kernel {p['kernel']}")
        return [(shape[0], p["num_output"], *out)]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        p = layer.params
        shapes = {"weight": (p["num_output"], known(layer, in_shapes)[1] // p["group"], *p["kernel"])}
        if p["bias_term"]:
            shapes["bias"] = (p["num_output"],)
        return shapes | lora.shapes(layer, shapes["weight"])

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        p = layer.params
        cls = resolve_all(_MODULES)[len(p["kernel"]) - 1]
        extra: dict[str, Any] = {}
        if lora.settings(layer) is not None:
            from surgery.layers import runtime  # torch's modules: imported for torch work only

            cls = (runtime.LoRAConv1d, runtime.LoRAConv2d, runtime.LoRAConv3d)[len(p["kernel"]) - 1]
            extra = lora.recipe_kwargs(layer)
        return ModuleRecipe(
            cls,
            extra
            | {
                "in_channels": known(layer, in_shapes)[1],
                "out_channels": p["num_output"],
                "kernel_size": tuple(p["kernel"]),
                "stride": tuple(p["stride"]),
                "padding": tuple(p["pad"]),
                "dilation": tuple(p["dilation"]),
                "groups": p["group"],
                "bias": p["bias_term"],
                "padding_mode": p.get("padding_mode", "zeros"),
            },
        )

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or isinstance(module.padding, str):
            return None  # 'same'/'valid' padding: carried as an opaque layer
        rank = len(module.kernel_size)
        return {
            "num_output": module.out_channels,
            "kernel": spatial(module.kernel_size, rank),
            "stride": spatial(module.stride, rank),
            "pad": spatial(module.padding, rank),
            "dilation": spatial(module.dilation, rank),
            "group": module.groups,
            "bias_term": module.bias is not None,
            "padding_mode": module.padding_mode,
        }

    torch_functionals = ("torch.nn.functional.conv1d", "torch.nn.functional.conv2d", "torch.nn.functional.conv3d")

    def import_torch_functional(
        self, target: Any, args: tuple, kwargs: dict, module: nn.Module
    ) -> dict[str, Any] | None:
        """``F.conv2d`` on a module's own weight with the call's own stride / padding
        (timm's Conv2dSame pads first, then convolves unpadded)."""
        values = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args)) | kwargs
        weight = getattr(module, "weight", None)
        padding = values.get("padding", 0)
        rank = resolve_all(_FUNCTIONALS).index(target) + 1 if target in resolve_all(_FUNCTIONALS) else 0
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 + rank or isinstance(padding, str):
            return None
        groups = int(values.get("groups", 1))
        return {
            "num_output": int(weight.shape[0]),
            "kernel": tuple(int(k) for k in weight.shape[2:]),
            "stride": spatial(values.get("stride", 1), rank),
            "pad": spatial(padding, rank),
            "dilation": spatial(values.get("dilation", 1), rank),
            "group": groups,
            "bias_term": "bias" in values and getattr(module, "bias", None) is not None,
            "padding_mode": "zeros",
        }

    onnx_ops = ("Conv",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        lora.to_onnx(layer, writer, self._write_onnx)  # merged, or the adapter beside it (KEEP)

    def _write_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        if p.get("padding_mode", "zeros") != "zeros":
            raise unsupported_in_onnx(layer)
        inputs = [layer.inputs[0], writer.weight(layer, "weight")]
        if p["bias_term"]:
            inputs.append(writer.weight(layer, "bias"))
        writer.node(
            "Conv",
            inputs,
            list(layer.outputs),
            layer.name,
            kernel_shape=list(p["kernel"]),
            strides=list(p["stride"]),
            pads=[*p["pad"], *p["pad"]],
            dilations=list(p["dilation"]),
            group=p["group"],
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        weight = reader.const_shape(node.input[1])  # the shape only: weights are read lazily
        if weight is None or not 3 <= len(weight) <= 5:
            return None
        rank = len(weight) - 2
        kernel = tuple(attrs.get("kernel_shape", weight[2:]))
        stride = tuple(attrs.get("strides", (1,) * rank))
        dilation = tuple(attrs.get("dilations", (1,) * rank))
        source = reader.blob(node.input[0])
        pads = reader.pads(node, source, kernel, stride, dilation)
        begin, end = pads[:rank], pads[rank:]
        if begin != end:  # asymmetric: an explicit Pad layer, then an unpadded convolution
            source = reader.pad_layer(node, source, [0, 0, *begin, 0, 0, *end])
            begin = [0] * rank
        params = {
            "num_output": int(weight[0]),
            "kernel": kernel,
            "stride": stride,
            "pad": tuple(begin),
            "dilation": dilation,
            "group": int(attrs.get("group", 1)),
            "bias_term": len(node.input) > 2,
        }
        blobs = {"weight": reader.param(node.input[1])}
        if len(node.input) > 2:
            blobs["bias"] = reader.param(node.input[2])
        return reader.layer(node, self.name, params, inputs=[source], blobs=blobs)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        layer = lora.merged(layer)  # a deploy file holds the adapter folded in
        p = layer.params
        if len(p["kernel"]) != 2:
            raise unsupported_in_caffe(layer, f"a {len(p['kernel'])}-D convolution (surgery writes Caffe's 2-D ones)")
        message = writer.layer(layer, self.name)
        param = message.convolution_param
        param.num_output, param.bias_term, param.group = p["num_output"], p["bias_term"], p["group"]
        param.kernel_h, param.kernel_w = p["kernel"]
        param.stride_h, param.stride_w = p["stride"]
        param.pad_h, param.pad_w = p["pad"]
        if tuple(p["dilation"]) != (1, 1):
            param.dilation.extend(p["dilation"])
        writer.blobs(message, layer, ("weight", "bias"))
        if p.get("padding_mode", "zeros") != "zeros":
            raise unsupported_in_caffe(layer, f"padding_mode {p['padding_mode']!r}")

    caffe_param_field = "convolution_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        if param.axis != 1:
            raise ModelFormatError("only axis 1 (N, C, H, W) convolutions are supported")
        params = {
            "num_output": param.num_output,
            "kernel": caffe_pair(param.kernel_size, param.kernel_h, param.kernel_w, param.HasField("kernel_h"), None),
            "stride": caffe_pair(param.stride, param.stride_h, param.stride_w, param.HasField("stride_h"), 1),
            "pad": caffe_pair(param.pad, param.pad_h, param.pad_w, param.HasField("pad_h"), 0),
            "dilation": caffe_pair(param.dilation, 1, 1, False, 1),
            "group": param.group,
            "bias_term": param.bias_term,
        }
        check_conv_params(params)
        return params

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return {
            role: getattr(param, f"{role}_filler") for role in ("weight", "bias") if param.HasField(f"{role}_filler")
        }


_MODULES = ("torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d")
_FUNCTIONALS = ("torch.nn.functional.conv1d", "torch.nn.functional.conv2d", "torch.nn.functional.conv3d")
_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, T, H, W)"}


def spatial(value: Any, rank: int) -> tuple[int, ...]:
    """One int per spatial axis from an int or a sequence (of one value, or of ``rank``)."""
    values = (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)
    return values * rank if len(values) == 1 else values


def check_conv_params(p: dict[str, Any]) -> None:
    """Caffe's and torch's ranges: sizes and counts of at least 1 (0 divides by zero)."""
    check_param(p["num_output"] >= 1, f"num_output must be at least 1, got {p['num_output']}")
    for key, name in (("kernel", "kernel_size"), ("stride", "stride"), ("dilation", "dilation")):
        check_param(min(p[key]) >= 1, f"{name} must be at least 1, got {p[key]}")
    check_param(min(p["pad"]) >= 0, f"pad must not be negative, got {p['pad']}")
    check_param(p["group"] >= 1, f"group must be at least 1, got {p['group']}")


def conv_params(
    num_output: int,
    kernel: int | tuple = 3,
    stride: int | tuple = 1,
    pad: int | tuple = 0,
    dilation: int | tuple = 1,
    group: int = 1,
    bias_term: bool = True,
) -> dict[str, Any]:
    """Hyper-parameters of a Convolution layer, with Caffe's defaults."""
    return {
        "num_output": num_output,
        "kernel": pair(kernel),
        "stride": pair(stride),
        "pad": pair(pad),
        "dilation": pair(dilation),
        "group": group,
        "bias_term": bias_term,
    }


def caffe_pair(repeated: Any, h: int, w: int, has_hw: bool, default: int | None) -> tuple[int, int]:
    """(h, w) from Caffe's repeated value (one for both axes, or one per axis) or *_h/*_w."""
    if has_hw:
        return (int(h), int(w))
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise ModelFormatError("a kernel size is required (kernel_size, or kernel_h and kernel_w)")
        return (default, default)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
