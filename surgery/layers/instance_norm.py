"""InstanceNorm: each sample's every channel normalised over its own spatial axes, then a
per-channel scale and shift (torch's InstanceNorm1d/2d/3d without running statistics,
ONNX's InstanceNormalization). The scale and shift are the layer's blobs, or (as ONNX
allows) two more inputs computed by the net. Caffe has no such layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer
from surgery.lazy_torch import F, fx, nn, resolve_all

_MODULES = ("torch.nn.InstanceNorm1d", "torch.nn.InstanceNorm2d", "torch.nn.InstanceNorm3d")


def known(shape: Shape | None) -> Shape:
    """An input shape that shape inference has already checked."""
    if shape is None:
        raise ShapeError("the input's shape is unknown")
    return shape


@register_layer
class InstanceNorm(LayerType):
    """Params: eps. Blobs: weight [C] and bias [C] (optional; or inputs 1 and 2)."""

    name = "InstanceNorm"
    caffe_syntax = False
    fresh_output = True
    passes_resize = True
    torch_modules = _MODULES
    blob_roles = ("weight", "bias")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        shape = in_shapes[0] if in_shapes else None
        if len(in_shapes) not in (1, 3) or shape is None or not 3 <= len(shape) <= 5:
            raise ShapeError(f"expects an (N, C, ...) input of 3 to 5 axes (and a scale and a shift), got {in_shapes}")
        channels = (shape[1],)
        shifts = [tuple(s) if s is not None else None for s in in_shapes[1:]]
        shifts += [tuple(blob.shape) for blob in layer.blobs.values()]
        if any(s != channels for s in shifts):
            raise ShapeError(f"scale and shift must be shaped {list(channels)}, got {shifts}", subject=layer.name)
        return [shape]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        channels = (known(in_shapes[0])[1],)
        return {"weight": channels, "bias": channels} if layer.params.get("affine", True) else {}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        return {"type": "constant", "value": 1.0 if role == "weight" else 0.0}  # the identity transform

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe | None:
        if len(layer.inputs) != 1:
            return None  # scale and shift computed by the net: emit_fx calls the function
        shape, affine = known(in_shapes[0]), "weight" in layer.blobs
        return ModuleRecipe(
            resolve_all(_MODULES)[len(shape) - 3],
            {"num_features": shape[1], "eps": float(layer.params.get("eps", 1e-5)), "affine": affine},
        )

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        if len(inputs) == 1:
            return super().emit_fx(layer, graph, inputs, in_shapes)  # the module of module_recipe
        x, scale, shift = inputs
        return graph.call_function(
            F.instance_norm, (x,), {"weight": scale, "bias": shift, "eps": float(layer.params.get("eps", 1e-5))}
        )

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if getattr(module, "track_running_stats", True):
            return None  # running statistics in eval: not ONNX's InstanceNormalization
        return {"eps": float(getattr(module, "eps", 1e-5)), "affine": bool(getattr(module, "affine", False))}

    onnx_ops = ("InstanceNormalization",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        channels = writer.in_shapes(layer)[0][1]
        if len(layer.inputs) == 3:
            inputs = list(layer.inputs)
        elif "weight" in layer.blobs:
            inputs = [layer.inputs[0], writer.weight(layer, "weight"), writer.weight(layer, "bias")]
        else:  # no affine part: ONNX's operator still takes a scale and a shift
            ones = writer.const(f"{layer.name}.weight", np.ones(channels, np.float32))
            zeros = writer.const(f"{layer.name}.bias", np.zeros(channels, np.float32))
            inputs = [layer.inputs[0], ones, zeros]
        eps = float(layer.params.get("eps", 1e-5))
        writer.node("InstanceNormalization", inputs, list(layer.outputs), layer.name, epsilon=eps)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        params = {"eps": float(reader.attrs(node).get("epsilon", 1e-5)), "affine": True}
        source = reader.blob(node.input[0])
        if all(reader.const_shape(name) is not None for name in node.input[1:3]):
            blobs = {"weight": reader.param(node.input[1]), "bias": reader.param(node.input[2])}
            return reader.layer(node, self.name, params, inputs=[source], blobs=blobs)
        inputs = [source, *(reader.blob_or_const(name, node) for name in node.input[1:3])]
        return reader.layer(node, self.name, params, inputs=inputs)
