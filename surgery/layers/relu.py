"""ReLU, with Caffe's negative_slope (torch's LeakyReLU)."""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer
from surgery.lazy_torch import F, nn


@register_layer
class ReLU(LayerType):
    """Params: negative_slope (0 = plain ReLU)."""

    name = "ReLU"
    passes_resize = True
    runs_in_place = True
    torch_modules = ("torch.nn.ReLU", "torch.nn.LeakyReLU")
    torch_functions = ("torch.nn.functional.relu", "torch.relu", "torch.nn.functional.leaky_relu", "relu")

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        slope = layer.params.get("negative_slope", 0.0)
        return ModuleRecipe(nn.LeakyReLU, {"negative_slope": slope}) if slope else ModuleRecipe(nn.ReLU, {})

    def import_torch_module(self, module: nn.Module) -> dict[str, Any]:
        return {"negative_slope": float(getattr(module, "negative_slope", 0.0))}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if target is F.leaky_relu:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return {"negative_slope": float(slope)}
        return {"negative_slope": 0.0}

    onnx_ops = ("Relu", "LeakyRelu")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        slope = layer.params.get("negative_slope", 0.0)
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        writer.node("LeakyRelu", *io, alpha=slope) if slope else writer.node("Relu", *io)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        slope = reader.attrs(node).get("alpha", 0.01) if node.op_type == "LeakyRelu" else 0.0
        return reader.layer(node, self.name, {"negative_slope": float(slope)})

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        message = writer.layer(layer, "ReLU")
        if layer.params.get("negative_slope"):
            message.relu_param.negative_slope = layer.params["negative_slope"]

    caffe_param_field = "relu_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"negative_slope": float(param.negative_slope)}
