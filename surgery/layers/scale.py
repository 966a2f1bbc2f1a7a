"""Scale: Caffe's learned per-channel scale (and optional bias), e.g. the affine part
that follows a Caffe BatchNorm."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, known, register_layer


def affine_shape(layer: Layer, shape: Shape) -> tuple[int, ...]:
    """The parameter shape: ``shape[axis : axis + num_axes]`` (num_axes -1 = to the end)."""
    axis = layer.params.get("axis", 1) % len(shape)
    num_axes = layer.params.get("num_axes", 1)
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ShapeError(f"axis {axis} + num_axes {num_axes} exceed the input's {len(shape)} axes")
    return tuple(shape[axis:end])


@register_layer
class Scale(LayerType):
    """Params: axis, num_axes, bias_term. Blobs: weight (the scale), bias (when bias_term)."""

    name = "Scale"
    passes_resize = True
    fresh_output = True
    blob_roles = ("weight", "bias")
    caffe_param_field = "scale_param"

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if len(in_shapes) != 1:
            raise ShapeError("a Scale with a second input (scale from a blob) is not supported; use Eltwise PROD")
        weight = layer.blobs.get("weight")
        if weight is not None and weight.shape != affine_shape(layer, known(layer, in_shapes)):
            raise ShapeError(f"scale {weight.shape} does not fit input {in_shapes[0]}")
        return [in_shapes[0]]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        shape = affine_shape(layer, known(layer, in_shapes))
        return {"weight": shape, "bias": shape} if layer.params.get("bias_term") else {"weight": shape}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        return {"type": "constant", "value": 1.0 if role == "weight" else 0.0}  # Caffe's: the identity

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers.runtime import ChannelAffine  # torch's modules: imported for torch work only

        return ModuleRecipe(
            ChannelAffine,
            {
                "shape": affine_shape(layer, known(layer, in_shapes)),
                "axis": layer.params.get("axis", 1) % len(known(layer, in_shapes)),
                "scale": True,
                "bias": bool(layer.params.get("bias_term")),
            },
        )

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0]
        axis = layer.params.get("axis", 1) % len(shape)
        current = layer.inputs[0]
        roles = [r for r in ("weight", "bias") if r in layer.blobs]
        for index, role in enumerate(roles):
            blob = layer.blobs[role].array()
            view = blob.reshape(*blob.shape, *([1] * (len(shape) - axis - blob.ndim)))
            last = index == len(roles) - 1
            out = layer.outputs[0] if last else f"{layer.name}/{role}"
            writer.node(
                "Mul" if role == "weight" else "Add",
                [current, writer.weight(layer, role, view)],
                [out],
                layer.name if last else out,
            )
            current = out

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        message = writer.layer(layer, "Scale")
        message.scale_param.axis = layer.params.get("axis", 1)
        message.scale_param.num_axes = layer.params.get("num_axes", 1)
        message.scale_param.bias_term = bool(layer.params.get("bias_term"))
        writer.blobs(message, layer, ("weight", "bias"))

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"axis": param.axis, "num_axes": param.num_axes, "bias_term": param.bias_term}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        fillers = {}
        if param.HasField("filler"):
            fillers["weight"] = param.filler
        if param.HasField("bias_filler"):
            fillers["bias"] = param.bias_filler
        return fillers
