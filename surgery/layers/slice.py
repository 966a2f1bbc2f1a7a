"""Slice: split a blob along an axis at given points into several tops."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer


def _sizes(layer: Layer, shape: Shape) -> list[int]:
    axis = layer.params.get("axis", 1) % len(shape)
    points = list(layer.params.get("slice_point") or [])
    count = len(layer.outputs)
    if not points:
        if shape[axis] % count:
            raise ShapeError(f"axis {axis} of size {shape[axis]} does not split evenly into {count} tops")
        return [shape[axis] // count] * count
    if len(points) != count - 1 or points != sorted(points) or points[-1] >= shape[axis]:
        raise ShapeError(f"slice points {points} do not cut axis {axis} of size {shape[axis]} into {count} tops")
    edges = [0, *points, shape[axis]]
    return [b - a for a, b in zip(edges, edges[1:])]


@register_layer
class Slice(LayerType):
    """Params: axis, slice_point (empty = equal parts, one per top)."""

    name = "Slice"
    caffe_param_field = "slice_param"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        axis = layer.params.get("axis", 1) % len(shape)
        return [(*shape[:axis], size, *shape[axis + 1:]) for size in _sizes(layer, shape)]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        shape = in_shapes[0]
        return graph.call_function(torch.split, (inputs[0], _sizes(layer, shape)),
                                   {"dim": layer.params.get("axis", 1) % len(shape)})

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        shape = writer.in_shapes(layer)[0]
        split = writer.const(f"{layer.name}.split", np.array(_sizes(layer, shape), dtype=np.int64))
        writer.node("Split", [layer.inputs[0], split], list(layer.outputs), layer.name,
                    axis=layer.params.get("axis", 1) % len(shape))

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        param = writer.layer(layer, "Slice").slice_param
        param.axis = layer.params.get("axis", 1)
        param.slice_point.extend(layer.params.get("slice_point") or [])

    def from_caffe(self, param: Any) -> dict[str, Any]:
        axis = param.axis if param.HasField("axis") or not param.HasField("slice_dim") else param.slice_dim
        return {"axis": axis, "slice_point": [int(p) for p in param.slice_point]}
