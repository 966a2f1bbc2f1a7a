"""InnerProduct: Caffe's InnerProduct, torch's Linear."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers import lora
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, known, register_layer
from surgery.lazy_torch import fx, nn, torch


@register_layer
class InnerProduct(LayerType):
    """Fully connected layer. Params: num_output, bias_term, axis. Blobs: weight [N, K], bias [N].

    ``axis`` follows Caffe: the input is flattened from ``axis`` on (Caffe's default 1);
    ``axis: -1`` applies to the last dimension only, as torch's Linear does.
    """

    name = "InnerProduct"
    fresh_output = True
    torch_modules = ("torch.nn.Linear",)
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
        _, features = self._split(layer, known(layer, in_shapes))
        shapes: dict[str, Shape] = {"weight": (layer.params["num_output"], features)}
        if layer.params["bias_term"]:
            shapes["bias"] = (layer.params["num_output"],)
        return shapes | lora.shapes(layer, shapes["weight"])

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        _, features = self._split(layer, known(layer, in_shapes))
        kwargs = {
            "in_features": features,
            "out_features": layer.params["num_output"],
            "bias": layer.params["bias_term"],
        }
        if lora.settings(layer) is not None:
            from surgery.layers.runtime import LoRALinear  # torch's modules: imported for torch work only

            return ModuleRecipe(LoRALinear, kwargs | lora.recipe_kwargs(layer))
        return ModuleRecipe(nn.Linear, kwargs)

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        x = inputs[0]
        axis = layer.params.get("axis", 1)
        rank = len(known(layer, in_shapes))
        if axis % rank != rank - 1:
            x = graph.call_function(torch.flatten, (x, axis))  # Caffe flattens from `axis` on
        return graph.call_module(layer.name, (x,))

    def import_torch_module(self, module: nn.Linear) -> dict[str, Any]:
        return {"num_output": module.out_features, "bias_term": module.bias is not None, "axis": -1}

    torch_functionals = ("torch.nn.functional.linear",)

    def import_torch_functional(
        self, target: Any, args: tuple, kwargs: dict, module: nn.Module
    ) -> dict[str, Any] | None:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        has_bias = len(args) > 2 or "bias" in kwargs
        return {
            "num_output": int(weight.shape[0]),
            "bias_term": has_bias and getattr(module, "bias", None) is not None,
            "axis": -1,
        }

    onnx_ops = ("Gemm", "MatMul")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        lora.to_onnx(layer, writer, self._write_onnx)  # merged, or the adapter beside it (KEEP)

    def _write_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0]
        axis = layer.params.get("axis", 1) % len(shape)
        source = layer.inputs[0]
        if axis == len(shape) - 1 and len(shape) > 2:  # torch Linear on (N, T, K): MatMul + Add
            weight_t = writer.weight(layer, "weight", np.ascontiguousarray(layer.blobs["weight"].array().T))
            if not layer.params["bias_term"]:
                writer.node("MatMul", [source, weight_t], list(layer.outputs), layer.name)
                return
            product = f"{layer.name}/matmul"
            writer.node("MatMul", [source, weight_t], [product], f"{layer.name}/matmul")
            writer.node("Add", [product, writer.weight(layer, "bias")], list(layer.outputs), layer.name)
            return
        if len(shape) > 2:  # Caffe flattens every axis from `axis` on
            flat = f"{layer.name}/flatten"
            writer.node("Flatten", [source], [flat], flat, axis=axis)
            source = flat
        inputs = [source, writer.weight(layer, "weight")]
        if layer.params["bias_term"]:
            inputs.append(writer.weight(layer, "bias"))
        writer.node("Gemm", inputs, list(layer.outputs), layer.name, transB=1)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        shape = reader.const_shape(node.input[1])  # the shape only: weights are read lazily
        if shape is None or len(shape) != 2:
            return None
        source = [reader.blob(node.input[0])]
        if node.op_type == "MatMul":  # x @ W with W (in, out): the IR stores (out, in)
            params = {"num_output": int(shape[1]), "bias_term": False, "axis": -1}
            blobs = {"weight": reader.param_derived(node.input[1], shape[::-1], lambda w: w.T)}
            return reader.layer(node, self.name, params, inputs=source, blobs=blobs)
        attrs = reader.attrs(node)
        if attrs.get("transA", 0):
            return None
        alpha, beta, trans_b = attrs.get("alpha", 1.0), attrs.get("beta", 1.0), attrs.get("transB", 0)
        out_features = int(shape[0] if trans_b else shape[1])
        weight_shape = (out_features, int(shape[1] if trans_b else shape[0]))
        if trans_b and alpha == 1:
            weight = reader.param(node.input[1])
        else:
            weight = reader.param_derived(node.input[1], weight_shape, lambda w: (w if trans_b else w.T) * alpha)
        blobs = {"weight": weight}
        params = {"num_output": out_features, "bias_term": len(node.input) > 2, "axis": 1}
        if len(node.input) > 2:
            bias = reader.const_shape(node.input[2])
            if bias is None or math.prod(bias) != out_features:
                return None
            blobs["bias"] = reader.param_derived(node.input[2], (out_features,), lambda b: b.reshape(-1) * beta)
        return reader.layer(node, self.name, params, inputs=source, blobs=blobs)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        layer = lora.merged(layer)
        rank = len(writer.in_shapes(layer)[0])
        axis = layer.params.get("axis", 1) % rank
        message = writer.layer(layer, "InnerProduct")
        message.inner_product_param.num_output = layer.params["num_output"]
        message.inner_product_param.bias_term = layer.params["bias_term"]
        message.inner_product_param.axis = axis
        writer.blobs(message, layer, ("weight", "bias"))

    caffe_param_field = "inner_product_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        if param.transpose:
            raise ShapeError("transpose: true InnerProduct layers are not supported")
        check_param(param.num_output >= 1, f"num_output must be at least 1, got {param.num_output}")
        return {"num_output": param.num_output, "bias_term": param.bias_term, "axis": param.axis}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        return {
            role: getattr(param, f"{role}_filler") for role in ("weight", "bias") if param.HasField(f"{role}_filler")
        }
