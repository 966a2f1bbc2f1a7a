"""InnerProduct: Caffe's InnerProduct, torch's Linear."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer


@register_layer
class InnerProduct(LayerType):
    """Fully connected layer. Params: num_output, bias_term, axis. Blobs: weight [N, K], bias [N].

    ``axis`` follows Caffe: the input is flattened from ``axis`` on (Caffe's default 1);
    ``axis: -1`` applies to the last dimension only, as torch's Linear does.
    """

    name = "InnerProduct"
    torch_modules = (nn.Linear,)
    blob_roles = ("weight", "bias")

    @staticmethod
    def _split(layer: Layer, shape: Shape) -> tuple[Shape, int]:
        axis = layer.params.get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 < axis < len(shape):
            raise ShapeError(f"axis {layer.params.get('axis')} is out of range for input {shape}")
        return shape[:axis], math.prod(shape[axis:])

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) < 2:
            raise ShapeError(f"expects an input with a batch axis, got {shape}")
        keep, features = self._split(layer, shape)
        weight = layer.blobs.get("weight")
        if weight is not None and weight.shape[1] != features:
            raise ShapeError(
                f"weight expects {weight.shape[1]} input features, the input {shape} gives {features}",
                fix="resize or reinitialise this layer (classifier/replace), or fix the layer that feeds it",
            )
        return [(*keep, layer.params["num_output"])]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        _, features = self._split(layer, in_shapes[0])
        shapes = {"weight": (layer.params["num_output"], features)}
        if layer.params["bias_term"]:
            shapes["bias"] = (layer.params["num_output"],)
        return shapes

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        _, features = self._split(layer, in_shapes[0])
        return ModuleRecipe(nn.Linear, {
            "in_features": features, "out_features": layer.params["num_output"], "bias": layer.params["bias_term"],
        })

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        x = inputs[0]
        axis = layer.params.get("axis", 1)
        rank = len(in_shapes[0])
        if axis % rank != rank - 1:
            x = graph.call_function(torch.flatten, (x, axis))  # Caffe flattens from `axis` on
        return graph.call_module(layer.name, (x,))

    def import_torch_module(self, module: nn.Linear) -> dict[str, Any]:
        return {"num_output": module.out_features, "bias_term": module.bias is not None, "axis": -1}

    caffe_param_field = "inner_product_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        if param.transpose:
            raise ShapeError("transpose: true InnerProduct layers are not supported")
        return {"num_output": param.num_output, "bias_term": param.bias_term, "axis": param.axis}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return {role: getattr(param, f"{role}_filler") for role in ("weight", "bias") if param.HasField(f"{role}_filler")}

