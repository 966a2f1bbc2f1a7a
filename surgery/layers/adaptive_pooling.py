"""AdaptivePooling: torch's AdaptiveAvgPool2d / AdaptiveMaxPool2d (fixed output size)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer


@register_layer
class AdaptivePooling(LayerType):
    """Params: pool ("AVE"|"MAX"), output_size (h, w; None keeps that input size)."""

    name = "AdaptivePooling"
    torch_modules = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    torch_functions = (F.adaptive_avg_pool2d,)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) != 4:
            raise ShapeError(f"expects a 4-D input (N, C, H, W), got {shape}")
        size = layer.params["output_size"]
        return [(shape[0], shape[1], *(s if s is not None else shape[2 + i] for i, s in enumerate(size)))]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        cls = nn.AdaptiveMaxPool2d if layer.params["pool"] == "MAX" else nn.AdaptiveAvgPool2d
        return ModuleRecipe(cls, {"output_size": tuple(layer.params["output_size"])})

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        from surgery.emitters.onnx_model import unsupported

        shape = writer.in_shapes(layer)[0][2:]
        size = [s if s is not None else shape[i] for i, s in enumerate(layer.params["output_size"])]
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        if size == [1, 1]:
            writer.node("GlobalMaxPool" if layer.params["pool"] == "MAX" else "GlobalAveragePool", *io)
        elif all(n % s == 0 for n, s in zip(shape, size)):  # equal windows: a plain pooling
            kernel = [n // s for n, s in zip(shape, size)]
            op = "MaxPool" if layer.params["pool"] == "MAX" else "AveragePool"
            writer.node(op, *io, kernel_shape=kernel, strides=kernel)
        else:
            raise unsupported(layer)

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, nn.AdaptiveMaxPool2d) and module.return_indices:
            return None
        pool = "MAX" if isinstance(module, nn.AdaptiveMaxPool2d) else "AVE"
        return {"pool": pool, "output_size": _size(module.output_size)}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return {"pool": "AVE", "output_size": _size(size)}


def _size(size: Any) -> list[int | None]:
    return [size, size] if isinstance(size, int) or size is None else list(size)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        from surgery.emitters.caffe import unsupported_in_caffe

        shape = writer.in_shapes(layer)[0][2:]
        size = [s if s is not None else shape[i] for i, s in enumerate(layer.params["output_size"])]
        if size != [1, 1]:
            raise unsupported_in_caffe(layer, "only global adaptive pooling has a Caffe form")
        param = writer.layer(layer, "Pooling").pooling_param
        param.pool, param.global_pooling = (0 if layer.params["pool"] == "MAX" else 1), True
