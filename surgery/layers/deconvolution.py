"""Deconvolution: Caffe's Deconvolution, torch's ConvTranspose2d, ONNX's ConvTranspose.
Weights are [C_in, num_output / group, kh, kw] in all three."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError, unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.convolution import Convolution
from surgery.layers.registry import LayerType, ModuleRecipe, known, pair, register_layer
from surgery.lazy_torch import nn


@register_layer
class Deconvolution(LayerType):
    """Params as Convolution's (num_output, kernel, stride, pad, dilation, group, bias_term)."""

    name = "Deconvolution"
    fresh_output = True
    torch_modules = ("torch.nn.ConvTranspose2d",)
    onnx_ops = ("ConvTranspose",)
    blob_roles = ("weight", "bias")

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        message = writer.layer(layer, self.name)
        param = message.convolution_param
        param.num_output, param.bias_term, param.group = p["num_output"], p["bias_term"], p["group"]
        param.kernel_h, param.kernel_w = p["kernel"]
        param.stride_h, param.stride_w = p["stride"]
        param.pad_h, param.pad_w = p["pad"]
        if tuple(p["dilation"]) != (1, 1):
            param.dilation.extend(p["dilation"])
        writer.blobs(message, layer, ("weight", "bias"))
        if tuple(p.get("output_padding", (0, 0))) != (0, 0):
            raise unsupported_in_caffe(layer, "Caffe's Deconvolution has no output_padding")

    caffe_param_field = "convolution_param"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, p = in_shapes[0], layer.params
        if shape is None or len(shape) != 4:
            raise ShapeError(f"expects a 4-D input (N, C, H, W), got {shape}")
        out = [
            p["stride"][i] * (shape[2 + i] - 1)
            + p["dilation"][i] * (p["kernel"][i] - 1)
            + 1
            - 2 * p["pad"][i]
            + p.get("output_padding", (0, 0))[i]
            for i in range(2)
        ]
        return [(shape[0], p["num_output"], *out)]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        p = layer.params
        shapes = {"weight": (known(layer, in_shapes)[1], p["num_output"] // p["group"], *p["kernel"])}
        if p["bias_term"]:
            shapes["bias"] = (p["num_output"],)
        return shapes

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        p = layer.params
        return ModuleRecipe(
            nn.ConvTranspose2d,
            {
                "in_channels": known(layer, in_shapes)[1],
                "out_channels": p["num_output"],
                "kernel_size": tuple(p["kernel"]),
                "stride": tuple(p["stride"]),
                "padding": tuple(p["pad"]),
                "output_padding": tuple(p.get("output_padding", (0, 0))),
                "groups": p["group"],
                "bias": p["bias_term"],
                "dilation": tuple(p["dilation"]),
            },
        )

    def import_torch_module(self, module: nn.ConvTranspose2d) -> dict[str, Any] | None:
        return {
            "num_output": module.out_channels,
            "kernel": pair(module.kernel_size),
            "stride": pair(module.stride),
            "pad": pair(module.padding),
            "dilation": pair(module.dilation),
            "group": module.groups,
            "bias_term": module.bias is not None,
            "output_padding": pair(module.output_padding),
        }

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        inputs = [layer.inputs[0], writer.weight(layer, "weight")] + (
            [writer.weight(layer, "bias")] if p["bias_term"] else []
        )
        writer.node(
            "ConvTranspose",
            inputs,
            list(layer.outputs),
            layer.name,
            kernel_shape=list(p["kernel"]),
            strides=list(p["stride"]),
            pads=[*p["pad"], *p["pad"]],
            dilations=list(p["dilation"]),
            group=p["group"],
            output_padding=list(p.get("output_padding", (0, 0))),
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        weight = reader.const_shape(node.input[1])  # the shape only: weights are read lazily
        if weight is None or len(weight) != 4 or "output_shape" in attrs:
            return None
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        group = int(attrs.get("group", 1))
        params = {
            "num_output": int(weight[1]) * group,
            "kernel": tuple(weight[2:]),
            "stride": tuple(attrs.get("strides", (1, 1))),
            "pad": tuple(pads[:2]),
            "dilation": tuple(attrs.get("dilations", (1, 1))),
            "group": group,
            "bias_term": len(node.input) > 2,
            "output_padding": tuple(attrs.get("output_padding", (0, 0))),
        }
        blobs = {"weight": reader.param(node.input[1])}
        if len(node.input) > 2:
            blobs["bias"] = reader.param(node.input[2])
        return reader.layer(node, self.name, params, inputs=[reader.blob(node.input[0])], blobs=blobs)

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return Convolution().from_caffe(param)  # the same ConvolutionParameter; Caffe has no output_padding

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return Convolution().caffe_fillers(param)
