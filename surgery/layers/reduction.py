"""Reduction: a sum, absolute sum, sum of squares or mean over some axes, times a
coefficient (torch's ``x.mean(dims)`` / ``x.sum(dims)``, ONNX's ReduceMean / ReduceSum /
ReduceL1 / ReduceSumSquare, Caffe's Reduction).

The axes are either a list (``axes``, as torch and ONNX name them; negative counts from
the end) or Caffe's form, every axis from ``axis`` to the last. Both are resolved against
the input's rank, never its sizes, so a layer stays valid at any batch size. Caffe can
only write the second form without ``keepdim`` (and a 4-D spatial mean with it, as a
global average pooling).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from surgery.errors import ShapeError, unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, check_param, known, register_layer
from surgery.lazy_torch import fx, torch
from surgery.protos import enum_name

#: Caffe's ReductionOp names; the ONNX operator computing each.
ONNX_OPS = {"SUM": "ReduceSum", "ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare", "MEAN": "ReduceMean"}
#: The opset from which each operator takes its axes as an input (an attribute before).
AXES_INPUT_FROM = {"ReduceSum": 13, "ReduceMean": 18, "ReduceL1": 18, "ReduceSumSquare": 18}
_OPERATION_OF = {op: operation for operation, op in ONNX_OPS.items()}
_TORCH_ARGS = ("input", "dim", "keepdim")


def reduced_axes(layer: Layer, shape: Shape | None) -> list[int]:
    """The axes ``layer`` reduces, non-negative and sorted; a ShapeError naming the layer
    when the input has no such axis or an axis is named twice."""
    if shape is None:
        raise ShapeError("expects a tensor input", subject=layer.name)
    rank, params = len(shape), layer.params
    given = [params.get("axis", 0)] if params.get("axes") is None else list(params["axes"])
    for axis in given:
        if not -rank <= axis < rank:
            raise ShapeError(
                f"axis {axis} is out of range for a {rank}-D input {shape}",
                subject=layer.name,
                fix=f"use axes in [{-rank}, {rank - 1}]",
            )
    if params.get("axes") is None:  # Caffe's form: every axis from `axis` on
        return list(range(given[0] % rank, rank))
    axes = sorted(axis % rank for axis in given)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"axes {given} name one axis twice for a {rank}-D input", subject=layer.name)
    return axes


def reduction_params(
    operation: str, axes: list[int] | None = None, *, axis: int = 0, keepdim: bool = False, coeff: float = 1.0
) -> dict[str, Any]:
    """Hyper-parameters of a Reduction layer; ``axes`` None means Caffe's "``axis`` to the end"."""
    check_param(operation in ONNX_OPS, f"operation must be one of {', '.join(ONNX_OPS)}, got {operation!r}")
    check_param(math.isfinite(coeff), f"coeff must be a finite number, got {coeff}")
    if axes is None:
        return {"operation": operation, "axis": int(axis), "keepdim": bool(keepdim), "coeff": float(coeff)}
    check_param(len(axes) > 0, "axes must name at least one axis", fix="list the axes to reduce")
    return {"operation": operation, "axes": [int(a) for a in axes], "keepdim": bool(keepdim), "coeff": float(coeff)}


@register_layer
class Reduction(LayerType):
    """Params: operation (SUM, ASUM, SUMSQ, MEAN), axes (a list) or axis (Caffe's: from it
    to the end), keepdim, coeff (the output is multiplied by it)."""

    name = "Reduction"
    # A mean over the spatial axes (a global pooling) keeps the channels: a resize flows
    # through; over other axes the consumers' parameter shapes do not change.
    passes_resize = True
    fresh_output = True
    torch_functions = ("torch.mean", "torch.sum", "mean", "sum")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = known(layer, in_shapes)
        axes = reduced_axes(layer, shape)
        if layer.params.get("keepdim"):
            return [tuple(1 if i in axes else size for i, size in enumerate(shape))]
        return [tuple(size for i, size in enumerate(shape) if i not in axes)]

    # -------------------------------------------------------------- torch
    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        p = layer.params
        x = inputs[0]
        if p["operation"] == "ASUM":
            x = graph.call_method("abs", (x,))
        elif p["operation"] == "SUMSQ":
            x = graph.call_method("square", (x,))
        method = "mean" if p["operation"] == "MEAN" else "sum"
        out = graph.call_method(method, (x, reduced_axes(layer, in_shapes[0])), {"keepdim": bool(p.get("keepdim"))})
        coeff = float(p.get("coeff", 1.0))
        return out if coeff == 1.0 else graph.call_function(operator.mul, (out, coeff))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if len(args) > len(_TORCH_ARGS) or set(kwargs) - {*_TORCH_ARGS, "dtype"} or kwargs.get("dtype") is not None:
            return None  # a dtype (or out=) changes what is computed: the call stays as it is
        values = dict(zip(_TORCH_ARGS, args)) | kwargs
        dim, keepdim = values.get("dim"), values.get("keepdim", False)
        dims = [dim] if isinstance(dim, int) and not isinstance(dim, bool) else dim
        if not isinstance(dims, (list, tuple)) or not dims or not all(type(d) is int for d in dims):
            return None  # no dims (a full reduction) or computed ones
        if 0 in dims or not isinstance(keepdim, bool):
            return None  # a reduction over the batch: not a per-sample layer
        operation = "MEAN" if target in (torch.mean, "mean") else "SUM"
        return reduction_params(operation, list(dims), keepdim=keepdim)

    # --------------------------------------------------------------- onnx
    onnx_ops = tuple(ONNX_OPS.values())

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        op = ONNX_OPS[p["operation"]]
        axes = reduced_axes(layer, writer.in_shapes(layer)[0])
        coeff = float(p.get("coeff", 1.0))
        scaled = coeff != 1.0
        reduced, name = (f"{layer.name}/reduced", f"{layer.name}/reduce") if scaled else (layer.outputs[0], layer.name)
        keepdims = int(bool(p.get("keepdim")))
        if writer.opset >= AXES_INPUT_FROM[op]:
            axes_input = writer.const(f"{layer.name}.axes", np.array(axes, np.int64))
            writer.node(op, [layer.inputs[0], axes_input], [reduced], name, keepdims=keepdims)
        else:
            writer.node(op, [layer.inputs[0]], [reduced], name, axes=axes, keepdims=keepdims)
        if scaled:
            factor = writer.const(f"{layer.name}.coeff", np.array(coeff, np.float32))
            writer.node("Mul", [reduced, factor], list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        source = reader.blob(node.input[0])
        rank = len(reader.shape(source))
        if "axes" in attrs:
            axes = list(attrs["axes"])
        elif len(node.input) > 1 and node.input[1]:
            axes = reader.const_list(node.input[1])
            if axes is None:
                return None  # axes computed at run time
        else:
            axes = []
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return None  # an identity, not a reduction
            axes = list(range(rank))  # ONNX's default: every axis
        params = reduction_params(
            _OPERATION_OF[node.op_type], [int(a) for a in axes], keepdim=bool(attrs.get("keepdims", 1))
        )
        return reader.layer(node, self.name, params, inputs=[source])

    # -------------------------------------------------------------- caffe
    caffe_param_field = "reduction_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        operation = enum_name(param, "operation")
        return reduction_params(operation, axis=param.axis, coeff=param.coeff)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        shape = writer.in_shapes(layer)[0]
        axes = reduced_axes(layer, shape)
        coeff = float(p.get("coeff", 1.0))
        if p.get("keepdim") and p["operation"] == "MEAN" and len(shape) == 4 and axes == [2, 3] and coeff == 1.0:
            # A squeeze-excite's x.mean((2, 3), keepdim=True) is Caffe's global average pooling.
            param = writer.layer(layer, "Pooling").pooling_param
            param.pool, param.global_pooling = 1, True
            return
        if p.get("keepdim") or axes != list(range(axes[0], len(shape))):
            raise unsupported_in_caffe(
                layer,
                f"Caffe's Reduction reduces every axis from one to the last and drops them; this one reduces "
                f"axes {axes} of a {len(shape)}-D input" + (" keeping them" if p.get("keepdim") else ""),
            )
        param = writer.layer(layer, self.name).reduction_param
        enum = param.DESCRIPTOR.fields_by_name["operation"].enum_type
        param.operation = enum.values_by_name[p["operation"]].number
        axis = axes[0] if p.get("axes") is not None else p.get("axis", 0)
        if axis != 0:  # Caffe's defaults are left out, as a hand-written prototxt would
            param.axis = axis
        if coeff != 1.0:
            param.coeff = coeff
