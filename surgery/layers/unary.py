"""UnaryMath: an elementwise function of one tensor with at most two constants (exp, log,
abs, sign, ELU, SELU, softplus, softsign), from torch's calls and modules and ONNX's
operators of the same names. Caffe's prototxt has no common form for them (its Exp and
Log take a base, scale and shift the schema here does not carry): refused by name."""

from __future__ import annotations

import functools
import operator
from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import F, fx, nn, resolve, torch

#: ONNX's SELU constants (torch's F.selu uses the same two numbers).
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875

#: function -> (ONNX operator, torch callables and method names that compute it)
FUNCTIONS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "exp": ("Exp", ("torch.exp", "exp")),
    "log": ("Log", ("torch.log", "log")),
    "abs": ("Abs", ("torch.abs", "abs")),
    "sign": ("Sign", ("torch.sign", "sign")),
    "elu": ("Elu", ("torch.nn.functional.elu",)),
    "selu": ("Selu", ("torch.nn.functional.selu",)),
    "softplus": ("Softplus", ("torch.nn.functional.softplus",)),
    "softsign": ("Softsign", ("torch.nn.functional.softsign",)),
}
_BY_ONNX = {onnx_op: function for function, (onnx_op, _) in FUNCTIONS.items()}
_BY_CALL = {call: function for function, (_, calls) in FUNCTIONS.items() for call in calls}
#: torch module class (by dotted name) -> function
_MODULES = {
    "torch.nn.ELU": "elu",
    "torch.nn.SELU": "selu",
    "torch.nn.Softplus": "softplus",
    "torch.nn.Softsign": "softsign",
}


@functools.cache
def _modules() -> dict[Any, str]:
    return {resolve(name): function for name, function in _MODULES.items()}


@functools.cache
def _calls() -> dict[Any, str]:
    return {resolve(call): function for call, function in _BY_CALL.items()}


def unary_params(function: str, alpha: float = 1.0, gamma: float = 1.0) -> dict[str, Any]:
    """Params of a UnaryMath layer: ``alpha`` is ELU's / SELU's, ``gamma`` SELU's scale."""
    if function == "selu":
        return {"function": function, "alpha": float(alpha), "gamma": float(gamma)}
    if function == "elu":
        return {"function": function, "alpha": float(alpha)}
    return {"function": function}


@register_layer
class UnaryMath(LayerType):
    """Params: function (exp, log, abs, sign, elu, selu, softplus, softsign), alpha
    (elu, selu), gamma (selu)."""

    name = "UnaryMath"
    caffe_syntax = False
    passes_resize = True
    fresh_output = True
    torch_modules = tuple(_MODULES)
    torch_functions = tuple(_BY_CALL)
    onnx_ops = tuple(_BY_ONNX)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        if layer.params.get("function") not in FUNCTIONS:
            raise ShapeError(
                f"unknown function {layer.params.get('function')!r}", fix=f"use one of {', '.join(FUNCTIONS)}"
            )
        return [in_shapes[0]]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        p, x = layer.params, inputs[0]
        if p["function"] == "elu":
            return graph.call_function(F.elu, (x, p["alpha"]))
        if p["function"] == "selu" and (p["alpha"], p["gamma"]) == (SELU_ALPHA, SELU_GAMMA):
            return graph.call_function(F.selu, (x,))  # torch's own kernel: bit for bit what torch computes
        if p["function"] == "selu":  # gamma * elu(x, alpha): the file's own constants
            return graph.call_function(operator.mul, (graph.call_function(F.elu, (x, p["alpha"])), p["gamma"]))
        call = {"softplus": F.softplus, "softsign": F.softsign}.get(p["function"])
        return graph.call_function(call or getattr(torch, p["function"]), (x,))

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, nn.Softplus) and (module.beta != 1 or module.threshold != 20):
            return None  # a scaled softplus: not ONNX's log(1 + exp(x))
        function = _modules()[type(module)]
        if function == "selu":
            return unary_params("selu", SELU_ALPHA, SELU_GAMMA)
        return unary_params(function, getattr(module, "alpha", 1.0))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        function = _calls()[target]
        if kwargs.get("inplace") is False:
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        if function == "elu":
            alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
            return unary_params("elu", alpha) if len(args) <= 2 and set(kwargs) <= {"alpha"} else None
        if function == "softplus":  # ONNX's log(1 + exp(x)): beta 1, threshold 20 (torch's defaults)
            named = dict(zip(("input", "beta", "threshold"), args)) | kwargs
            if set(named) - {"input", "beta", "threshold"} or (named.get("beta", 1), named.get("threshold", 20)) != (
                1,
                20,
            ):
                return None
            return unary_params("softplus")
        if len(args) != 1 or kwargs:
            return None  # torch.exp(x, out=y): not this layer
        return unary_params("selu", SELU_ALPHA, SELU_GAMMA) if function == "selu" else unary_params(function)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        attributes = {k: p[k] for k in ("alpha", "gamma") if k in p}
        writer.node(FUNCTIONS[p["function"]][0], list(layer.inputs), list(layer.outputs), layer.name, **attributes)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        function, attrs = _BY_ONNX[node.op_type], reader.attrs(node)
        alpha = attrs.get("alpha", SELU_ALPHA if function == "selu" else 1.0)
        params = unary_params(function, alpha, attrs.get("gamma", SELU_GAMMA))
        return reader.layer(node, self.name, params, inputs=[reader.blob(node.input[0])])
