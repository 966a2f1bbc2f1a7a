"""Pooling: MAX / AVE windows, Caffe's and torch's ceil rounding, global pooling; over 1,
2 or 3 spatial axes (the length of ``kernel``; global pooling: every axis after C)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from surgery.errors import ModelFormatError, ShapeError, unsupported_in_caffe, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.layers.convolution import spatial
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, known, register_layer
from surgery.lazy_torch import nn, resolve_all
from surgery.protos import enum_name


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output size; with ceil_mode the last window must start inside
    the input or its left padding (Caffe applies the same clip when pad > 0)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _real_cell_scale(size: tuple, kernel: tuple, stride: tuple, begin: list[int], end: list[int]) -> np.ndarray:
    """``(1, 1, OH, OW)``: each window's cell count over the real (unpadded) cells it
    covers, for an average written as a padded average."""
    ones = np.pad(np.ones(size, np.float64), [(begin[0], end[0]), (begin[1], end[1])])
    windows = np.lib.stride_tricks.sliding_window_view(ones, kernel)[:: stride[0], :: stride[1]]
    real = windows.sum(axis=(-2, -1))
    return (kernel[0] * kernel[1] / real)[None, None].astype(np.float32)


_MAX = ("torch.nn.MaxPool1d", "torch.nn.MaxPool2d", "torch.nn.MaxPool3d")
_AVE = ("torch.nn.AvgPool1d", "torch.nn.AvgPool2d", "torch.nn.AvgPool3d")
_MAX_CALLS = ("torch.nn.functional.max_pool1d", "torch.nn.functional.max_pool2d", "torch.nn.functional.max_pool3d")
_AVE_CALLS = ("torch.nn.functional.avg_pool1d", "torch.nn.functional.avg_pool2d", "torch.nn.functional.avg_pool3d")
_ADAPTIVE_MAX = ("torch.nn.AdaptiveMaxPool1d", "torch.nn.AdaptiveMaxPool2d", "torch.nn.AdaptiveMaxPool3d")
_ADAPTIVE_AVE = ("torch.nn.AdaptiveAvgPool1d", "torch.nn.AdaptiveAvgPool2d", "torch.nn.AdaptiveAvgPool3d")
_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, T, H, W)"}
#: Adaptive poolings read as global ones when their output size is 1 (the 2-D ones are
#: AdaptivePooling layers, which also take other sizes).
_GLOBAL = (
    "torch.nn.AdaptiveAvgPool1d",
    "torch.nn.AdaptiveAvgPool3d",
    "torch.nn.AdaptiveMaxPool1d",
    "torch.nn.AdaptiveMaxPool3d",
)
#: The positional parameters of torch's max_pool*d / avg_pool*d, in order.
_MAX_ARGUMENTS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVE_ARGUMENTS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


@register_layer
class Pooling(LayerType):
    """Params: pool ("MAX"|"AVE"), kernel, stride, pad, dilation, ceil_mode,
    count_include_pad (AVE), global_pooling."""

    name = "Pooling"
    passes_resize = True
    fresh_output = True
    torch_modules = (*_MAX, *_AVE, *_GLOBAL)
    torch_functions = (*_MAX_CALLS, *_AVE_CALLS)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, p = in_shapes[0], layer.params
        if p.get("global_pooling"):
            if shape is None or not 3 <= len(shape) <= 5:
                raise ShapeError(f"global pooling expects a 3-D to 5-D input (N, C, ...), got {shape}")
            return [(shape[0], shape[1], *(1,) * (len(shape) - 2))]
        rank = len(p["kernel"])
        if shape is None or len(shape) != 2 + rank:
            raise ShapeError(f"a {rank}-D pooling expects a {2 + rank}-D input {_LAYOUTS[rank]}, got {shape}")
        out = [
            pool_output_size(
                shape[2 + i], p["kernel"][i], p["stride"][i], p["pad"][i], p["dilation"][i], p["ceil_mode"]
            )
            for i in range(rank)
        ]
        if min(out) < 1:
            raise ShapeError(f"input {shape} is too small for a {p['kernel']} pooling window")
        return [(shape[0], shape[1], *out)]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        p = layer.params
        if p.get("global_pooling"):
            rank = len(known(layer, in_shapes)) - 2
            cls = (resolve_all(_ADAPTIVE_MAX) if p["pool"] == "MAX" else resolve_all(_ADAPTIVE_AVE))[rank - 1]
            return ModuleRecipe(cls, {"output_size": 1})
        rank = len(p["kernel"])
        common = {
            "kernel_size": tuple(p["kernel"]),
            "stride": tuple(p["stride"]),
            "padding": tuple(p["pad"]),
            "ceil_mode": p["ceil_mode"],
        }
        if p["pool"] == "MAX":
            return ModuleRecipe(resolve_all(_MAX)[rank - 1], common | {"dilation": tuple(p["dilation"])})
        return ModuleRecipe(
            resolve_all(_AVE)[rank - 1],
            common
            | {
                "count_include_pad": p["count_include_pad"],
                "divisor_override": p.get("divisor_override"),
            },
        )

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, resolve_all(_GLOBAL)):  # an adaptive pooling to size 1 is a global one
            sizes = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,)
            if set(sizes) != {1} or getattr(module, "return_indices", False):
                return None
            pool = "MAX" if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool3d)) else "AVE"
            return pooling_params(pool, 1, global_pooling=True)
        if isinstance(module, resolve_all(_MAX)):
            if module.return_indices:
                return None
            return pooling_params(
                "MAX",
                module.kernel_size,
                module.stride,
                module.padding,
                dilation=module.dilation,
                ceil_mode=module.ceil_mode,
                rank=resolve_all(_MAX).index(type(module)) + 1,
            )
        if not isinstance(module, resolve_all(_AVE)):
            return None
        return pooling_params(
            "AVE",
            module.kernel_size,
            module.stride,
            module.padding,
            ceil_mode=module.ceil_mode,
            count_include_pad=module.count_include_pad,
            divisor_override=getattr(module, "divisor_override", None),
            rank=resolve_all(_AVE).index(type(module)) + 1,
        )

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        names = _MAX_ARGUMENTS if target in resolve_all(_MAX_CALLS) else _AVE_ARGUMENTS
        if len(args) > len(names):
            return None
        values = dict(zip(names, args)) | kwargs
        if target in resolve_all(_MAX_CALLS):
            if values.get("return_indices"):
                return None
            return pooling_params(
                "MAX",
                values["kernel_size"],
                values.get("stride"),
                values.get("padding", 0),
                dilation=values.get("dilation", 1),
                ceil_mode=values.get("ceil_mode", False),
                rank=resolve_all(_MAX_CALLS).index(target) + 1,
            )
        return pooling_params(
            "AVE",
            values["kernel_size"],
            values.get("stride"),
            values.get("padding", 0),
            ceil_mode=values.get("ceil_mode", False),
            count_include_pad=values.get("count_include_pad", True),
            divisor_override=values.get("divisor_override"),
            rank=resolve_all(_AVE_CALLS).index(target) + 1,
        )

    onnx_ops = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        if p.get("global_pooling"):
            writer.node("GlobalMaxPool" if p["pool"] == "MAX" else "GlobalAveragePool", *io)
            return
        common = {
            "kernel_shape": list(p["kernel"]),
            "strides": list(p["stride"]),
            "pads": [*p["pad"], *p["pad"]],
            "ceil_mode": int(p["ceil_mode"]),
        }
        if p["pool"] == "MAX":
            writer.node("MaxPool", *io, dilations=list(p["dilation"]), **common)
        elif p.get("divisor_override"):
            raise unsupported_in_onnx(layer)
        else:
            writer.node("AveragePool", *io, count_include_pad=int(p["count_include_pad"]), **common)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        source = reader.blob(node.input[0])
        if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            params = pooling_params("MAX" if node.op_type == "GlobalMaxPool" else "AVE", 1, global_pooling=True)
            return reader.layer(node, self.name, params, inputs=[source])
        attrs = reader.attrs(node)
        if node.op_type == "ReduceMean":
            axes = attrs.get("axes") or reader.const_list(node.input[1] if len(node.input) > 1 else None)
            rank = len(reader.shape(source))
            if rank != 4 or sorted(a % rank for a in axes or []) != [2, 3]:
                return None
            params = pooling_params("AVE", 1, global_pooling=True)
            if attrs.get("keepdims", 1):
                return reader.layer(node, self.name, params, inputs=[source])
            pooled = reader.layer(node, self.name, params, inputs=[source], outputs=[f"{node.output[0]}/keepdims"])
            return reader.add(
                Layer(
                    reader.unique(f"{pooled.name}/flatten"),
                    "Flatten",
                    inputs=pooled.outputs,
                    outputs=[node.output[0]],
                    params={"axis": 1, "end_axis": -1},
                )
            )
        kernel = tuple(attrs["kernel_shape"])
        rank = len(kernel)
        stride = tuple(attrs.get("strides", (1,) * rank))
        dilation = tuple(attrs.get("dilations", (1,) * rank))
        pads = reader.pads(node, source, kernel, stride, dilation)
        pool = "MAX" if node.op_type == "MaxPool" else "AVE"
        ceil, include = bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0))
        if pads[:rank] != pads[rank:]:
            if rank != 2:
                return None  # uneven padding is read for 2-D pooling only
            return self._asymmetric(node, reader, source, pool, (kernel, stride, dilation), pads, ceil, include)
        params = pooling_params(
            pool, kernel, stride, pads[:rank], dilation=dilation, ceil_mode=ceil, count_include_pad=include
        )
        return reader.layer(node, self.name, params, inputs=[source])

    def _asymmetric(
        self, node: Any, reader: Any, source: str, pool: str, window: tuple, pads: list[int], ceil: bool, include: bool
    ) -> Layer | None:
        """Pooling with more padding at the end than at the start (``pads: [0, 0, 1, 1]``),
        which is how Caffe's ceil-mode pooling reaches ONNX: the same windows as ceil
        mode with the start's padding, when the output sizes agree (max, or an average
        over the real cells only); otherwise an explicit Pad layer before the pooling
        (max pads with -inf, an average that counts the padding with 0)."""
        kernel, stride, dilation = window
        begin, end = pads[:2], pads[2:]
        size = reader.shape(source)[2:]
        floor_sizes = [
            (size[i] + begin[i] + end[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2)
        ]
        ceil_sizes = [pool_output_size(size[i], kernel[i], stride[i], begin[i], dilation[i], True) for i in range(2)]
        like_ceil = all(b <= e and 2 * b <= k for b, e, k in zip(begin, end, kernel))
        if not ceil and like_ceil and floor_sizes == ceil_sizes and (pool == "MAX" or not include):
            params = pooling_params(pool, kernel, stride, begin, dilation=dilation, ceil_mode=True)
            return reader.layer(node, self.name, params, inputs=[source])
        if pool == "AVE" and not include and ceil:
            raise ModelFormatError(
                f"ONNX node {reader.node_name(node)!r} (AveragePool) pads {pads} unevenly, rounds its output size "
                "up and leaves the padding out of its average; surgery has no form that computes all three",
                fix="export with symmetric pads, ceil_mode=0 or count_include_pad=1",
            )
        value = -math.inf if pool == "MAX" else 0.0
        padded = reader.pad_layer(node, source, [0, 0, begin[0], begin[1], 0, 0, end[0], end[1]], value)
        params = pooling_params(pool, kernel, stride, (0, 0), dilation=dilation, ceil_mode=ceil, count_include_pad=True)
        if pool == "MAX" or include:
            return reader.layer(node, self.name, params, inputs=[padded])
        # An average over the real cells only: the padded average times kernel / real cells.
        pooled = reader.add(
            Layer(
                reader.unique(f"{reader.node_name(node)}/pool"),
                self.name,
                inputs=[padded],
                outputs=[f"{node.output[0]}/padded_average"],
                params=params,
            )
        )
        scale = reader.constant_layer(node, _real_cell_scale(size, kernel, stride, begin, end), "real_cells")
        return reader.layer(node, "Eltwise", {"operation": "PROD", "coeff": []}, inputs=[pooled.outputs[0], scale])

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        shape = writer.in_shapes(layer)[0]
        if len(shape) != 4:
            raise unsupported_in_caffe(layer, f"a pooling over a {len(shape)}-D input (Caffe's Pooling is 2-D)")
        param = writer.layer(layer, "Pooling").pooling_param
        param.pool = 0 if p["pool"] == "MAX" else 1
        if p.get("global_pooling"):
            param.global_pooling = True
            return
        if p["pool"] == "AVE" and not p["count_include_pad"] and any(p["pad"]):
            raise unsupported_in_caffe(layer, "Caffe's AVE pooling counts padding in its divisor")
        if tuple(p["dilation"]) != (1, 1) or p.get("divisor_override"):
            raise unsupported_in_caffe(layer, "dilated pooling / divisor_override")
        param.kernel_h, param.kernel_w = p["kernel"]
        param.stride_h, param.stride_w = p["stride"]
        param.pad_h, param.pad_w = p["pad"]
        param.round_mode = 0 if p["ceil_mode"] else 1

    caffe_param_field = "pooling_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        pool = enum_name(param, "pool")
        if pool not in ("MAX", "AVE"):
            raise ShapeError(f"{pool} pooling is not supported (Caffe has no CPU implementation of it either)")
        if param.global_pooling:
            return pooling_params(pool, 1, 1, 0, global_pooling=True)
        kernel = (param.kernel_h, param.kernel_w) if param.HasField("kernel_h") else param.kernel_size
        stride = (param.stride_h, param.stride_w) if param.HasField("stride_h") else param.stride
        pad = (param.pad_h, param.pad_w) if param.HasField("pad_h") else param.pad
        # Caffe rounds up (CEIL, its default) and its AVE divisor counts padding cells.
        params = pooling_params(pool, kernel, stride, pad, ceil_mode=param.round_mode == 0, count_include_pad=True)
        check_param(
            min(params["kernel"]) >= 1,
            f"kernel_size must be at least 1, got {params['kernel']}",
            fix="set kernel_size (or kernel_h and kernel_w), or global_pooling: true",
        )
        check_param(min(params["stride"]) >= 1, f"stride must be at least 1, got {params['stride']}")
        return params


def pooling_params(
    pool: str,
    kernel: Any,
    stride: Any = None,
    pad: Any = 0,
    *,
    dilation: Any = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    global_pooling: bool = False,
    divisor_override: int | None = None,
    rank: int | None = None,
) -> dict[str, Any]:
    """Hyper-parameters of a Pooling layer; ``stride`` None means ``kernel`` (torch's
    default); ``rank``: the spatial axes (default: the length of ``kernel``, else 2)."""
    rank = rank or (2 if isinstance(kernel, int) else len(tuple(kernel)))
    kernel = spatial(kernel, rank)
    params = {
        "pool": pool,
        "kernel": kernel,
        "stride": spatial(stride, rank) if stride else kernel,
        "pad": spatial(pad, rank),
        "dilation": spatial(dilation, rank),
        "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad),
        "global_pooling": global_pooling,
    }
    if divisor_override:
        params["divisor_override"] = divisor_override
    return params
