"""LayerNorm: normalise over the last axes (torch's ``normalized_shape``), then an
optional elementwise affine (weight, bias) over those axes.

ONNX writes LayerNormalization (opset 17) with ``axis = -len(normalized_shape)``;
without an affine part the scale input is a constant of ones. Caffe has no such layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer
from surgery.lazy_torch import nn


@register_layer
class LayerNorm(LayerType):
    """Params: normalized_shape (the trailing axes' sizes), eps.
    Blobs: weight and bias (shaped ``normalized_shape``), both optional."""

    name = "LayerNorm"
    caffe_syntax = False
    fresh_output = True
    torch_modules = ("torch.nn.LayerNorm",)
    torch_functions = ("torch.nn.functional.layer_norm",)
    blob_roles = ("weight", "bias")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, normalized = in_shapes[0], tuple(layer.params["normalized_shape"])
        if shape is None or len(shape) < len(normalized) or tuple(shape[len(shape) - len(normalized) :]) != normalized:
            raise ShapeError(
                f"normalises over trailing axes {list(normalized)}, the input is shaped {shape}",
                fix="resize the layer that feeds it to keep those sizes, or replace this layer",
                subject=layer.name,
            )
        for role, blob in layer.blobs.items():
            if tuple(blob.shape) != normalized:
                raise ShapeError(f"{role} is shaped {list(blob.shape)}, not {list(normalized)}", subject=layer.name)
        return [shape]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        normalized = tuple(layer.params["normalized_shape"])
        return {"weight": normalized, "bias": normalized} if layer.params.get("affine", True) else {}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        return {"type": "constant", "value": 1.0 if role == "weight" else 0.0}  # the identity transform

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(
            nn.LayerNorm,
            {
                "normalized_shape": tuple(layer.params["normalized_shape"]),
                "eps": float(layer.params.get("eps", 1e-5)),
                "elementwise_affine": "weight" in layer.blobs,
                "bias": "bias" in layer.blobs,
            },
        )

    def import_torch_module(self, module: nn.LayerNorm) -> dict[str, Any]:
        return {
            "normalized_shape": list(module.normalized_shape),
            "eps": float(module.eps),
            "affine": module.elementwise_affine,
        }

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        names = ["input", "normalized_shape", "weight", "bias", "eps"]
        values = dict(zip(names, args)) | kwargs
        shape = values.get("normalized_shape")
        if not isinstance(shape, (list, tuple)):
            return None  # a computed shape
        # Tensor arguments read None here; weight/bias tensors make a second input, which
        # infer_shapes refuses (the importer maps a module's own weights itself).
        if not all(isinstance(d, int) for d in shape):
            return None
        return {"normalized_shape": list(shape), "eps": float(values.get("eps", 1e-5)), "affine": False}

    torch_functionals = ("torch.nn.functional.layer_norm",)

    def import_torch_functional(
        self, target: Any, args: tuple, kwargs: dict, module: nn.Module
    ) -> dict[str, Any] | None:
        """``F.layer_norm`` on a module's own weight and bias (timm's LayerNorm2d after a permute)."""
        values = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), args)) | kwargs
        shape = values.get("normalized_shape")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
            return None
        return {"normalized_shape": list(shape), "eps": float(values.get("eps", 1e-5)), "affine": True}

    onnx_ops = ("LayerNormalization",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        normalized = tuple(layer.params["normalized_shape"])
        scale = (
            writer.weight(layer, "weight")
            if "weight" in layer.blobs
            else writer.const(f"{layer.name}.weight", np.ones(normalized, np.float32))
        )
        inputs = [layer.inputs[0], scale] + ([writer.weight(layer, "bias")] if "bias" in layer.blobs else [])
        writer.node(
            "LayerNormalization",
            inputs,
            list(layer.outputs),
            layer.name,
            axis=-len(normalized),
            epsilon=float(layer.params.get("eps", 1e-5)),
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        extra_outputs = len(node.output) > 1 and any(node.output[1:])
        if extra_outputs or any(reader.const_shape(n) is None for n in node.input[1:]):
            return None  # mean / inv-std outputs used, or a computed scale
        source = reader.blob(node.input[0])
        shape = reader.shape(source)
        axis = int(attrs.get("axis", -1)) % len(shape)
        blobs = {"weight": reader.param(node.input[1])}
        if len(node.input) > 2 and node.input[2]:
            blobs["bias"] = reader.param(node.input[2])
        params = {"normalized_shape": list(shape[axis:]), "eps": float(attrs.get("epsilon", 1e-5)), "affine": True}
        return reader.layer(node, self.name, params, inputs=[source], blobs=blobs)
