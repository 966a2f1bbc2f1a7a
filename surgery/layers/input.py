"""Input: a net input blob of a given shape (batch axis first)."""

from __future__ import annotations

from torch import fx

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer


@register_layer
class Input(LayerType):
    """Params: shape. The emitters turn it into a model input, not a computation."""

    name = "Input"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        return [tuple(layer.params["shape"])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.placeholder(layer.outputs[0])
