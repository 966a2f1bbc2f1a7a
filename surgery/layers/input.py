"""Input: a net input blob of a given shape (batch axis first)."""

from __future__ import annotations

import keyword
from typing import Any

from surgery.errors import ModelFormatError, ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx

#: Names the generated model's source already uses at module level or as ``self``.
_TAKEN_NAMES = frozenset(
    {"self", "torch", "math", "nn", "F", "inf", "nan", "NoneType", "device", "Path", "fx_pytree", "pytree"}
)


def argument_name(blob: str, index: int) -> str:
    """The forward argument for input ``blob``: the blob's name when it is a short plain
    ASCII identifier, ``input_<index>`` otherwise (a name from a model file is never
    pasted into generated source)."""
    plain = (
        blob.isascii()
        and blob.isidentifier()
        and not keyword.iskeyword(blob)
        and len(blob) <= 64
        and blob not in _TAKEN_NAMES
        and not blob.startswith("__")
    )
    return blob if plain else f"input_{index}"


@register_layer
class Input(LayerType):
    """Params: shape. The emitters turn it into a model input, not a computation."""

    name = "Input"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        shape = layer.params.get("shape")
        if not shape or min(shape) < 1:
            raise ShapeError(f"input shape {shape} is not a shape", fix="give it input_param { shape { dim: ... } }")
        return [tuple(shape)]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        taken = {node.target for node in graph.nodes if node.op == "placeholder"}
        name = argument_name(layer.outputs[0], len(taken))
        while name in taken:
            name += "_"
        return graph.create_node("placeholder", name, name=name)

    caffe_param_field = "input_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        if len(param.shape) > 1:
            raise ModelFormatError("an Input layer with several shapes: give each input its own layer")
        return {"shape": tuple(int(d) for d in param.shape[0].dim)} if param.shape else {}

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        writer.layer(layer, "Input").input_param.shape.add().dim.extend(layer.params["shape"])
