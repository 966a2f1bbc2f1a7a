"""Bias: Caffe's learned additive bias broadcast from ``axis`` (no scale)."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, known, register_layer
from surgery.layers.scale import affine_shape


@register_layer
class Bias(LayerType):
    """Params: axis, num_axes. Blobs: bias."""

    name = "Bias"
    passes_resize = True
    fresh_output = True
    blob_roles = ("bias",)
    caffe_param_field = "bias_param"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if len(in_shapes) != 1:
            raise ShapeError("a Bias with a second input is not supported; use Eltwise SUM")
        return [in_shapes[0]]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        return {"bias": affine_shape(layer, known(layer, in_shapes))}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        return {"type": "constant", "value": 0.0}

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers.runtime import ChannelAffine  # torch's modules: imported for torch work only

        return ModuleRecipe(
            ChannelAffine,
            {
                "shape": affine_shape(layer, known(layer, in_shapes)),
                "axis": layer.params.get("axis", 1) % len(known(layer, in_shapes)),
                "scale": False,
                "bias": True,
            },
        )

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0]
        blob = layer.blobs["bias"].array()
        axis = layer.params.get("axis", 1) % len(shape)
        view = blob.reshape(*blob.shape, *([1] * (len(shape) - axis - blob.ndim)))
        writer.node("Add", [layer.inputs[0], writer.weight(layer, "bias", view)], list(layer.outputs), layer.name)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        message = writer.layer(layer, "Bias")
        message.bias_param.axis = layer.params.get("axis", 1)
        message.bias_param.num_axes = layer.params.get("num_axes", 1)
        writer.blobs(message, layer, ("bias",))

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"axis": param.axis, "num_axes": param.num_axes}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return {"bias": param.filler} if param.HasField("filler") else {}
