"""Eltwise: elementwise SUM (with coefficients), PROD or MAX of several blobs, or POW of
two, with numpy broadcasting (Caffe's Eltwise needs equal shapes, the Caffe emitter checks
that, and has no POW)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from surgery.errors import ShapeError, unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.meta_run import NonTensor
from surgery.layers.registry import LayerType, all_known, register_layer
from surgery.lazy_torch import fx, resolve, torch
from surgery.protos import enum_name

_FUNCTIONS = {
    operator.add: "SUM",
    operator.iadd: "SUM",
    "torch.add": "SUM",
    "add": "SUM",
    "add_": "SUM",
    operator.sub: "SUB",
    operator.isub: "SUB",
    "torch.sub": "SUB",
    "sub": "SUB",
    operator.mul: "PROD",
    operator.imul: "PROD",
    "torch.mul": "PROD",
    "mul": "PROD",
    "mul_": "PROD",
    "torch.maximum": "MAX",
    "torch.max": "MAX",
    operator.pow: "POW",
    "torch.pow": "POW",
    "pow": "POW",
}


@functools.cache
def _functions() -> dict[Any, str]:
    """_FUNCTIONS keyed by the callables themselves (torch's resolved from their names)."""
    return {resolve(call): value for call, value in _FUNCTIONS.items()}


@register_layer
class Eltwise(LayerType):
    """Params: operation ("SUM"|"PROD"|"MAX"|"POW": the first input to the power of the
    second), coeff (SUM only: one per input)."""

    name = "Eltwise"
    fresh_output = True
    torch_functions = tuple(_FUNCTIONS)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if len(in_shapes) < 2:
            raise ShapeError(f"needs at least two inputs, got {len(in_shapes)}")
        # a size or a number (h * w of a shape) flows here as a NonTensor, not a tensor's shape
        values = [item.value for item in cast(list[Any], in_shapes) if isinstance(item, NonTensor)]
        if values:
            raise ShapeError(f"combines tensors, but reads the non-tensor value(s) {', '.join(map(repr, values))}")
        coeff = layer.params.get("coeff") or []
        if coeff and (layer.params["operation"] != "SUM" or len(coeff) != len(in_shapes)):
            raise ShapeError("coeff needs operation SUM and one value per input")
        if layer.params["operation"] == "POW" and len(in_shapes) != 2:
            raise ShapeError(f"POW takes a base and an exponent, got {len(in_shapes)} inputs")
        shapes = all_known(layer, in_shapes)
        try:
            return [tuple(int(d) for d in np.broadcast_shapes(*map(tuple, shapes)))]
        except ValueError:
            raise ShapeError(
                f"input shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast",
                fix="make the inputs agree on every axis, or be 1 where they differ (a 1-channel gate)",
            ) from None

    def output_is_fresh(self, layer: Layer) -> bool:
        return len(layer.inputs) > 1  # one input with coefficient 1 is that input itself

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        operation = layer.params["operation"]
        coeff = layer.params.get("coeff") or []
        terms: list[Any] = list(inputs)
        if coeff:
            terms = [t if c == 1 else graph.call_function(operator.mul, (t, float(c))) for t, c in zip(terms, coeff)]
        combinations: dict[str, Callable[..., Any]] = {
            "SUM": operator.add,
            "PROD": operator.mul,
            "MAX": torch.maximum,
            "POW": torch.pow,
        }
        combine = combinations[operation]
        result = terms[0]
        for term in terms[1:]:
            result = graph.call_function(combine, (result, term))
        return result

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if len(args) != 2 or any(a is not None for a in args) or set(kwargs) - {"alpha"}:
            return None  # a scalar operand, or not a two-tensor call: stays an opaque call
        operation = _functions()[target]
        alpha = float(kwargs.get("alpha", 1))
        if target is torch.max and kwargs:
            return None
        if operation == "SUB":
            return {"operation": "SUM", "coeff": [1.0, -alpha]}
        if alpha != 1:
            return {"operation": "SUM", "coeff": [1.0, alpha]} if operation == "SUM" else None
        return {"operation": operation, "coeff": []}

    onnx_ops = ("Add", "Sub", "Mul", "Div", "Max", "Sum", "Pow")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        operation = layer.params["operation"]
        coeff = layer.params.get("coeff") or []
        terms = list(layer.inputs)
        for index, c in enumerate(coeff):
            if c != 1:
                scaled = f"{layer.name}/coeff{index}"
                factor = writer.const(f"{layer.name}.coeff{index}", np.array(c, dtype=np.float32))
                writer.node("Mul", [terms[index], factor], [scaled], scaled)
                terms[index] = scaled
        op = {"SUM": "Add", "PROD": "Mul", "MAX": "Max", "POW": "Pow"}[operation]
        result = terms[0]
        for index, term in enumerate(terms[1:], start=1):
            last = index == len(terms) - 1
            out = layer.outputs[0] if last else f"{layer.name}/{index}"
            writer.node(op, [result, term], [out], layer.name if last else out)
            result = out

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        import numpy as np

        op = node.op_type
        consts = [reader.const(name) for name in node.input]
        if op == "Pow" and consts[1] is not None:
            return None  # a constant exponent: a Power layer
        if op == "Div":
            if consts[0] is not None:
                return None  # a constant over a tensor: no Eltwise form
            if consts[1] is not None:
                divisor = reader.constant_layer(node, np.reciprocal(consts[1]), "divisor")
            else:  # x / y of two tensors: x * y^-1
                divisor = f"{node.output[0]}/reciprocal"
                reader.add(
                    Layer(
                        reader.unique(f"{reader.node_name(node)}/reciprocal"),
                        "Power",
                        inputs=[reader.blob(node.input[1])],
                        outputs=[divisor],
                        params={"power": -1.0, "scale": 1.0, "shift": 0.0},
                    )
                )
            inputs = [reader.blob(node.input[0]), divisor]
            return reader.layer(node, self.name, {"operation": "PROD", "coeff": []}, inputs=inputs)
        inputs = [reader.blob_or_const(name, node) for name in node.input]
        if op == "Sub":
            return reader.layer(node, self.name, {"operation": "SUM", "coeff": [1.0, -1.0]}, inputs=inputs)
        operation = {"Add": "SUM", "Sum": "SUM", "Mul": "PROD", "Max": "MAX", "Pow": "POW"}[op]
        return reader.layer(node, self.name, {"operation": operation, "coeff": []}, inputs=inputs)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        shapes = writer.in_shapes(layer)
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise unsupported_in_caffe(layer, f"Caffe's Eltwise needs equal shapes, got {shapes} (no broadcasting)")
        if layer.params["operation"] == "POW":
            raise unsupported_in_caffe(layer, "Caffe's Eltwise has no POW")
        param = writer.layer(layer, "Eltwise").eltwise_param
        param.operation = {"PROD": 0, "SUM": 1, "MAX": 2}[layer.params["operation"]]
        param.coeff.extend(layer.params.get("coeff") or [])

    caffe_param_field = "eltwise_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        operation = enum_name(param, "operation")
        return {"operation": operation, "coeff": [float(c) for c in param.coeff]}
