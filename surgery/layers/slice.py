"""Slice: split a blob along an axis at given points into several tops (Caffe's Slice;
torch's ``chunk`` / ``split`` / ``unbind``; ONNX's Split, followed by a Squeeze per top
for ``unbind``)."""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import numpy as np

from surgery.errors import ShapeError, unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, check_axis, known, register_layer
from surgery.lazy_torch import fx, resolve_all, torch

_CHUNKS = ("torch.chunk", "chunk")
_SPLITS = ("torch.split", "split")
_UNBINDS = ("torch.unbind", "unbind")


def _sizes(layer: Layer, shape: Shape) -> list[int]:
    axis = check_axis(layer.params.get("axis", 1), shape)
    points = list(layer.params.get("slice_point") or [])
    count = len(layer.outputs)
    if not points:
        if shape[axis] % count:
            raise ShapeError(f"axis {axis} of size {shape[axis]} does not split evenly into {count} tops")
        sizes = [shape[axis] // count] * count
    elif len(points) != count - 1 or points != sorted(points) or points[0] <= 0 or points[-1] >= shape[axis]:
        raise ShapeError(f"slice points {points} do not cut axis {axis} of size {shape[axis]} into {count} tops")
    else:
        edges = [0, *points, shape[axis]]
        sizes = [b - a for a, b in itertools.pairwise(edges)]
    if layer.params.get("squeeze") and set(sizes) != {1}:
        raise ShapeError(f"squeeze needs parts of size 1, axis {axis} is cut into {sizes}")
    return sizes


def _torch_dim(target: Any, args: tuple, kwargs: dict) -> Any:
    """The ``dim`` of a traced ``chunk`` / ``split`` / ``unbind`` (0 by default)."""
    position = 1 if target in resolve_all(_UNBINDS) else 2
    return args[position] if len(args) > position else kwargs.get("dim", 0)


def _sizes_arg(args: tuple, kwargs: dict) -> Any:
    """The second argument of a traced ``chunk`` / ``split``: a count, a size or sizes."""
    return (
        args[1]
        if len(args) > 1
        else kwargs.get("chunks", kwargs.get("split_size_or_sections", kwargs.get("split_size")))
    )


def _cuts_by_count(target: Any, args: tuple, kwargs: dict) -> bool:
    """``chunk(n)`` / ``split(k)``: the parts follow the axis' size. On axis 0, which may
    be the batch, the call itself stays, as fixed sizes would hold at one batch only
    (``unbind`` and a list of sizes mean the same at any batch, typed or not)."""
    return target in resolve_all(_CHUNKS) or (
        target in resolve_all(_SPLITS) and not isinstance(_sizes_arg(args, kwargs), (list, tuple))
    )


def _torch_parts(target: Any, args: tuple, kwargs: dict, size: int) -> list[int] | None:
    """The part sizes of a traced ``chunk`` / ``split`` / ``unbind`` of an axis of
    ``size``, exactly as torch cuts it (None: arguments this type cannot read)."""
    if size < 1:
        return None
    if target in resolve_all(_UNBINDS):
        return [1] * size
    how = _sizes_arg(args, kwargs)
    if target in resolve_all(_CHUNKS):
        if not isinstance(how, int) or how < 1:
            return None
        how = math.ceil(size / how)  # torch's chunk: parts of ceil(size / chunks), so maybe fewer parts
    if isinstance(how, int) and how > 0:
        return [min(how, size - start) for start in range(0, size, how)]
    if isinstance(how, (list, tuple)) and how and all(isinstance(s, int) and s > 0 for s in how) and sum(how) == size:
        return list(how)
    return None


@register_layer
class Slice(LayerType):
    """Params: axis, slice_point (empty = equal parts, one per top), squeeze (each part
    is of size 1 and loses the axis: torch's ``unbind``; no Caffe form)."""

    name = "Slice"
    caffe_param_field = "slice_param"
    torch_functions = (*_CHUNKS, *_SPLITS, *_UNBINDS)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = known(layer, in_shapes)
        axis = check_axis(layer.params.get("axis", 1), shape)
        if layer.params.get("squeeze"):
            return [(*shape[:axis], *shape[axis + 1 :]) for _ in _sizes(layer, shape)]
        return [(*shape[:axis], size, *shape[axis + 1 :]) for size in _sizes(layer, shape)]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        shape = known(layer, in_shapes)
        axis = check_axis(layer.params.get("axis", 1), shape)
        if layer.params.get("squeeze"):
            parts = graph.call_function(torch.unbind, (inputs[0],), {"dim": axis})
        else:
            parts = graph.call_function(torch.split, (inputs[0], _sizes(layer, shape)), {"dim": axis})
        # one top: the emitter takes the node as that tensor, not as a tuple to index
        return graph.call_function(operator.getitem, (parts, 0)) if len(layer.outputs) == 1 else parts

    def import_torch_call_shaped(
        self, target: Any, args: tuple, kwargs: dict, in_shapes: list[Shape | None]
    ) -> tuple[dict[str, Any] | None, Any]:
        """The parts come from the input's size along the axis, as torch cuts it
        (``chunk(3)`` of 4 is two parts of 2), one top per part."""
        if (
            len(in_shapes) != 1
            or args[:1] != (None,)
            or set(kwargs) - {"chunks", "split_size_or_sections", "split_size", "dim"}
        ):
            return None, None
        shape, dim = in_shapes[0], _torch_dim(target, args, kwargs)
        if shape is None or not isinstance(dim, int) or not -len(shape) <= dim < len(shape):
            return None, None
        sizes = _torch_parts(target, args, kwargs, shape[dim])
        if not sizes or (dim % len(shape) == 0 and _cuts_by_count(target, args, kwargs)):
            return None, None
        edges = list(np.cumsum(sizes[:-1]).tolist())
        params = {"axis": dim, "slice_point": edges}
        if target in resolve_all(_UNBINDS):
            params["squeeze"] = True
        return params, tuple(range(len(sizes)))

    onnx_ops = ("Split", "Squeeze")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0]
        axis = check_axis(layer.params.get("axis", 1), shape)
        split = writer.const(f"{layer.name}.split", np.array(_sizes(layer, shape), dtype=np.int64))
        if not layer.params.get("squeeze"):
            writer.node("Split", [layer.inputs[0], split], list(layer.outputs), layer.name, axis=axis)
            return
        parts = [f"{top}/part" for top in layer.outputs]
        writer.node("Split", [layer.inputs[0], split], parts, f"{layer.name}/split", axis=axis)
        axes = writer.const(f"{layer.name}.axes", np.array([axis], dtype=np.int64))
        for index, (part, top) in enumerate(zip(parts, layer.outputs)):
            writer.node("Squeeze", [part, axes], [top], layer.name if index == 0 else f"{layer.name}/squeeze{index}")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if node.op_type != "Split" or any(not o for o in node.output):
            return None  # a Squeeze on its own is not a Slice
        source = reader.blob(node.input[0])
        shape = reader.shape(source)
        attrs = reader.attrs(node)
        axis = check_axis(attrs.get("axis", 0), shape)
        # the sizes: an input from opset 13, an attribute before
        sizes = reader.const_list(node.input[1]) if len(node.input) > 1 and node.input[1] else attrs.get("split")
        if sizes is None:
            if shape[axis] % len(node.output):
                return None  # opset 18's uneven num_outputs split: not read
            sizes = [shape[axis] // len(node.output)] * len(node.output)
        params = {"axis": axis, "slice_point": [int(p) for p in np.cumsum(sizes[:-1])]}
        squeezes = _squeezes(node, reader, axis, len(shape)) if set(sizes) == {1} else None
        if squeezes is not None:
            params["squeeze"] = True
        return reader.layer(
            node, self.name, params, inputs=[source], outputs=squeezes if squeezes is not None else list(node.output)
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        if layer.params.get("squeeze"):
            raise unsupported_in_caffe(layer, "it removes the sliced axis (torch's unbind), which Caffe's Slice cannot")
        param = writer.layer(layer, "Slice").slice_param
        param.axis = layer.params.get("axis", 1)
        param.slice_point.extend(layer.params.get("slice_point") or [])

    def from_caffe(self, param: Any) -> dict[str, Any]:
        axis = param.axis if param.HasField("axis") or not param.HasField("slice_dim") else param.slice_dim
        return {"axis": axis, "slice_point": [int(p) for p in param.slice_point]}


def _squeezes(split: Any, reader: Any, axis: int, rank: int) -> list[str] | None:
    """The outputs of the Squeeze nodes that alone read each output of ``split`` and
    remove ``axis`` (the ONNX form of torch's ``unbind``), else None."""
    readers: dict[str, list[Any]] = {name: [] for name in split.output}
    for node in reader.model.graph.node:
        for name in node.input:
            if name in readers:
                readers[name].append(node)
    tops = []
    for name in split.output:
        found = readers[name]
        if len(found) != 1 or found[0].op_type != "Squeeze" or len(found[0].input) != 2:
            return None
        axes = reader.const_list(found[0].input[1])
        if axes is None or [a % rank for a in axes] != [axis]:
            return None
        tops.append(found[0].output[0])
    outputs = {o.name for o in reader.model.graph.output}
    return None if any(name in outputs for name in split.output) else tops
