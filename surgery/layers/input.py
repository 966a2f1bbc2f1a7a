"""Input: a net input blob of a given shape (batch axis first)."""

from __future__ import annotations

from typing import Any

from torch import fx

from surgery.errors import ModelFormatError
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

    caffe_param_field = "input_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        if len(param.shape) > 1:
            raise ModelFormatError("an Input layer with several shapes: give each input its own layer")
        return {"shape": tuple(int(d) for d in param.shape[0].dim)} if param.shape else {}

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        writer.layer(layer, "Input").input_param.shape.add().dim.extend(layer.params["shape"])
