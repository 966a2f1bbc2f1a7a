"""Dropout: inverted dropout while training, identity in eval (Caffe's and torch's)."""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, register_layer
from surgery.lazy_torch import nn


@register_layer
class Dropout(LayerType):
    """Params: ratio (the probability of zeroing an element)."""

    name = "Dropout"
    passes_resize = True
    torch_modules = ("torch.nn.Dropout",)
    torch_functions = ("torch.nn.functional.dropout",)

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(nn.Dropout, {"p": layer.params.get("ratio", 0.5)})

    def import_torch_module(self, module: nn.Dropout) -> dict[str, Any]:
        return {"ratio": module.p}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        # The traced `training=` flag is dropped: the emitted module follows train()/eval().
        return {"ratio": float(args[1] if len(args) > 1 else kwargs.get("p", 0.5))}

    onnx_ops = ("Dropout",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        # A deploy graph: dropout is the identity at inference.
        writer.node("Identity", list(layer.inputs), list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        ratio = reader.attrs(node).get("ratio")
        if ratio is None and len(node.input) > 1 and node.input[1]:
            values = reader.const_list(node.input[1])
            ratio = values[0] if values else 0.5
        return reader.layer(
            node,
            self.name,
            {"ratio": float(0.5 if ratio is None else ratio)},
            inputs=[reader.blob(node.input[0])],
            outputs=node.output[:1],
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        writer.layer(layer, "Dropout").dropout_param.dropout_ratio = layer.params.get("ratio", 0.5)

    caffe_param_field = "dropout_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        ratio = param.dropout_ratio
        check_param(
            0 <= ratio < 1,
            f"dropout_ratio must be in [0, 1), got {ratio:g}",
            fix="the probability of zeroing an element, e.g. dropout_ratio: 0.5",
        )
        return {"ratio": ratio}
