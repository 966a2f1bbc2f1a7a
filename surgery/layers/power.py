"""Power: Caffe's ``y = (shift + scale * x) ^ power``; also a traced ``x * 3``, ``x + 1``,
``x / 2`` with a Python number."""

from __future__ import annotations

import functools
import operator
from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx, resolve, torch

_SCALAR_OPS = {
    operator.mul: "mul",
    operator.imul: "mul",
    "torch.mul": "mul",
    "mul": "mul",
    operator.add: "add",
    operator.iadd: "add",
    "torch.add": "add",
    "add": "add",
    operator.sub: "sub",
    operator.isub: "sub",
    "torch.sub": "sub",
    "sub": "sub",
    operator.truediv: "div",
    operator.itruediv: "div",
    "torch.div": "div",
    "div": "div",
}


@functools.cache
def _scalar_ops() -> dict[Any, str]:
    """_SCALAR_OPS keyed by the callables themselves (torch's resolved from their names)."""
    return {resolve(call): value for call, value in _SCALAR_OPS.items()}


@register_layer
class Power(LayerType):
    """Params: power, scale, shift (Caffe's defaults 1, 1, 0)."""

    name = "Power"
    passes_resize = True
    torch_functions = tuple(_SCALAR_OPS)

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        p = layer.params
        x = inputs[0]
        if p["scale"] != 1:
            x = graph.call_function(operator.mul, (x, p["scale"]))
        if p["shift"] != 0:
            x = graph.call_function(operator.add, (x, p["shift"]))
        if p["power"] != 1:
            x = graph.call_function(torch.pow, (x, p["power"]))
        return x

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if len(args) != 2 or kwargs or [a is None for a in args].count(True) != 1:
            return None
        number = args[1] if args[0] is None else args[0]
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            return None
        op, tensor_first = _scalar_ops()[target], args[0] is None
        if op == "mul":
            return power_params(scale=number)
        if op == "add":
            return power_params(shift=number)
        if op == "sub":  # x - c, or c - x
            return power_params(shift=-number) if tensor_first else power_params(scale=-1.0, shift=number)
        if op == "div" and tensor_first and number != 0:
            return power_params(scale=1.0 / number)
        return None

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        p = layer.params
        steps: list[tuple[str, str, Any, Any]] = [
            ("Mul", "scale", p["scale"], 1),
            ("Add", "shift", p["shift"], 0),
            ("Pow", "power", p["power"], 1),
        ]
        steps = [s for s in steps if s[2] != s[3]] or [("Identity", "", None, None)]
        current = layer.inputs[0]
        for index, (op, role, value, _) in enumerate(steps):
            last = index == len(steps) - 1
            out = layer.outputs[0] if last else f"{layer.name}/{role}"
            inputs = (
                [current]
                if value is None
                else [current, writer.const(f"{layer.name}.{role}", np.array(value, dtype=np.float32))]
            )
            writer.node(op, inputs, [out], layer.name if last else out)
            current = out

    #: ONNX operators that are a Power: -x, sqrt(x), 1/x, x ** c for a constant number c.
    onnx_ops = ("Neg", "Sqrt", "Reciprocal", "Pow")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if node.op_type == "Pow":
            exponent = reader.const_list(node.input[1])
            if exponent is None or len(exponent) != 1:
                return None  # a computed or per-element exponent
            params = power_params(power=exponent[0])
        else:
            params = {
                "Neg": power_params(scale=-1.0),
                "Sqrt": power_params(power=0.5),
                "Reciprocal": power_params(power=-1.0),
            }[node.op_type]
        return reader.layer(node, self.name, params, inputs=[reader.blob(node.input[0])])

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        param = writer.layer(layer, "Power").power_param
        param.power, param.scale, param.shift = (layer.params[k] for k in ("power", "scale", "shift"))

    caffe_param_field = "power_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return power_params(param.power, param.scale, param.shift)


def power_params(power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> dict[str, Any]:
    return {"power": float(power), "scale": float(scale), "shift": float(shift)}
