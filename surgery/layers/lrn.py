"""LRN: local response normalisation across channels (Caffe's, torch's, ONNX's)."""

from __future__ import annotations

from typing import Any

from torch import nn

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer


@register_layer
class LRN(LayerType):
    """Params: local_size, alpha, beta, k, norm_region ("ACROSS_CHANNELS").
    ``y = x / (k + alpha/size * sum of x^2 over size neighbouring channels)^beta``."""

    name = "LRN"
    torch_modules = (nn.LocalResponseNorm,)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        if layer.params.get("norm_region", "ACROSS_CHANNELS") != "ACROSS_CHANNELS":
            raise ShapeError("only ACROSS_CHANNELS normalisation has a torch module")
        return [in_shapes[0]]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        p = layer.params
        return ModuleRecipe(nn.LocalResponseNorm, {"size": p["local_size"], "alpha": p["alpha"], "beta": p["beta"], "k": p["k"]})

    def import_torch_module(self, module: nn.LocalResponseNorm) -> dict[str, Any]:
        return {"local_size": module.size, "alpha": module.alpha, "beta": module.beta, "k": module.k,
                "norm_region": "ACROSS_CHANNELS"}

    caffe_param_field = "lrn_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        region = param.DESCRIPTOR.fields_by_name["norm_region"].enum_type.values_by_number[param.norm_region].name
        return {"local_size": param.local_size, "alpha": param.alpha, "beta": param.beta, "k": param.k,
                "norm_region": region}
