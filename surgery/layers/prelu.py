"""PReLU: a learned negative slope per channel (or one shared)."""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, known, register_layer
from surgery.lazy_torch import nn


@register_layer
class PReLU(LayerType):
    """Params: channel_shared. Blobs: weight [C] (or [1])."""

    name = "PReLU"
    passes_resize = True
    torch_modules = ("torch.nn.PReLU",)
    blob_roles = ("weight",)

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        return {"weight": (1,) if layer.params.get("channel_shared") else (known(layer, in_shapes)[1],)}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        return {"type": "constant", "value": 0.25}  # Caffe's and torch's default slope

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(nn.PReLU, {"num_parameters": layer.blobs["weight"].shape[0]})

    def import_torch_module(self, module: nn.PReLU) -> dict[str, Any]:
        return {"channel_shared": module.num_parameters == 1}

    onnx_ops = ("PRelu",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        rank = len(writer.in_shapes(layer)[0])
        weight = layer.blobs["weight"].array()
        slope = weight.reshape(-1, *([1] * (rank - 2))) if rank > 2 else weight
        writer.node("PRelu", [layer.inputs[0], writer.weight(layer, "weight", slope)], list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        import math

        shape = reader.const_shape(node.input[1])
        if shape is None:
            return None
        count = math.prod(shape)
        weight = reader.param_derived(node.input[1], (count,), lambda slope: slope.reshape(-1))
        return reader.layer(
            node,
            self.name,
            {"channel_shared": count == 1},
            inputs=[reader.blob(node.input[0])],
            blobs={"weight": weight},
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        message = writer.layer(layer, "PReLU")
        message.prelu_param.channel_shared = bool(layer.params.get("channel_shared"))
        writer.blobs(message, layer, ("weight",))

    caffe_param_field = "prelu_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"channel_shared": param.channel_shared}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return {"weight": param.filler} if param.HasField("filler") else {}
