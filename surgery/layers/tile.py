"""Tile: each axis repeated a number of times (torch's ``x.repeat(...)`` / ``torch.tile``,
ONNX's Tile with constant repeats). The batch axis is never repeated, so the layer holds
at any batch size. Caffe's Tile repeats one axis only: refused by name."""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx


@register_layer
class Tile(LayerType):
    """Params: repeats (one per axis, the batch axis' 1; torch.repeat's extra leading
    axes are not read)."""

    name = "Tile"
    caffe_syntax = False
    torch_functions = ("torch.tile", "repeat", "tile")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, repeats = in_shapes[0], list(layer.params.get("repeats") or [])
        if shape is None or len(repeats) != len(shape) or any(not isinstance(r, int) or r < 1 for r in repeats):
            raise ShapeError(f"repeats {repeats} do not fit input {shape} (one count of at least 1 per axis)")
        if repeats[0] != 1:
            raise ShapeError(f"repeats {repeats} repeat the batch axis", fix="repeat the other axes only")
        return [tuple(d * r for d, r in zip(shape, repeats))]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_method("repeat", (inputs[0], *layer.params["repeats"]))

    def import_torch_call_shaped(
        self, target: Any, args: tuple, kwargs: dict, in_shapes: list[Shape | None]
    ) -> tuple[dict[str, Any] | None, Any]:
        shape = in_shapes[0] if in_shapes else None
        values: Any
        if target == "repeat":  # x.repeat(2, 3) or x.repeat((2, 3))
            values = args[1:]
            if len(values) == 1 and isinstance(values[0], (tuple, list)):
                values = tuple(values[0])
            extra = set(kwargs)
        else:  # torch.tile(x, dims) / x.tile(dims)
            values = args[1] if len(args) > 1 else kwargs.get("dims")
            extra = set(kwargs) - {"dims"}
        if extra or not isinstance(shape, tuple) or not isinstance(values, (tuple, list)) or not values:
            return None, None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None, None  # counts computed at run time
        if target == "repeat" and len(values) != len(shape):
            return None, None  # repeat with extra leading axes adds axes: not this layer
        repeats = [1] * (len(shape) - len(values)) + [int(v) for v in values]  # tile pads with 1s in front
        return ({"repeats": repeats} if repeats[0] == 1 and len(repeats) == len(shape) else None), None

    onnx_ops = ("Tile",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        repeats = writer.const(f"{layer.name}.repeats", np.array(layer.params["repeats"], dtype=np.int64))
        writer.node("Tile", [layer.inputs[0], repeats], list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        repeats = reader.const_list(node.input[1])
        if repeats is None or not repeats or int(repeats[0]) != 1:
            return None  # computed counts, or the batch axis repeated
        return reader.layer(node, self.name, {"repeats": [int(r) for r in repeats]})
