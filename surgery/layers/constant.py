"""Constant: a tensor the traced model reads directly (``get_attr``), e.g. a learned
class token. Emitted as a tiny module holding it, so it stays a named parameter."""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.meta_run import TypedShape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer


@register_layer
class Constant(LayerType):
    """No inputs. Blobs: value."""

    name = "Constant"
    caffe_syntax = False
    blob_roles = ("value",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        blob = layer.blobs["value"]
        return [blob.shape if blob.dtype_name == "float32" else TypedShape(blob.shape, blob.dtype_name)]

    def trainable_roles(self, layer: Layer) -> tuple[str, ...]:
        return ("value",) if layer.blobs["value"].trainable else ()

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers.runtime import ConstantTensor  # torch's modules: imported for torch work only

        blob = layer.blobs["value"]
        return ModuleRecipe(ConstantTensor, {"shape": blob.shape, "trainable": blob.trainable})

    onnx_ops = ("Constant",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        writer.node("Identity", [writer.weight(layer, "value")], list(layer.outputs), layer.name)
