"""GELU: `y = x * Phi(x)` (Phi the standard normal CDF), or its tanh approximation
(torch's ``approximate="tanh"``). No blobs.

ONNX has a Gelu operator (with the same ``approximate`` attribute) from opset 20;
below that the layer is written as its formula, the last Mul carrying its name:
``0.5 x (1 + erf(x / sqrt 2))`` or ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from surgery.errors import ModelFormatError
from surgery.ir import Layer, Shape
from surgery.layers.registry import ActivationType, ModuleRecipe, register_layer
from surgery.lazy_torch import nn

GELU_OPSET = 20
APPROXIMATIONS = ("none", "tanh")


def _approximate(layer: Layer) -> str:
    value = layer.params.get("approximate", "none")
    if value not in APPROXIMATIONS:
        raise ModelFormatError(
            f"GELU {layer.name!r} has approximate {value!r}",
            fix=f"use one of {', '.join(map(repr, APPROXIMATIONS))}",
            subject=layer.name,
        )
    return value


@register_layer
class GELU(ActivationType):
    """Params: approximate ("none" = exact erf form, "tanh")."""

    name = "GELU"
    module_class = "torch.nn.GELU"
    torch_modules = ("torch.nn.GELU",)
    torch_functions = ("torch.nn.functional.gelu",)
    onnx_ops = ("Gelu",)

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(nn.GELU, {"approximate": _approximate(layer)})

    def import_torch_module(self, module: nn.GELU) -> dict[str, Any]:
        return {"approximate": module.approximate}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        approximate = kwargs.get("approximate", "none")
        return {"approximate": approximate} if approximate in APPROXIMATIONS and len(args) == 1 else None

    onnx_op = "Gelu"
    onnx_native_opset = GELU_OPSET

    def onnx_attributes(self, layer: Layer) -> dict[str, Any]:
        return {"approximate": _approximate(layer)}

    def to_onnx_formula(self, layer: Layer, writer: Any) -> None:
        approximate = _approximate(layer)
        x, name = layer.inputs[0], layer.name

        def const(role: str, value: float) -> str:
            return writer.const(f"{name}.{role}", np.array(value, dtype=np.float32))

        def step(op: str, inputs: list[str], label: str) -> str:
            out = f"{name}/{label}"
            writer.node(op, inputs, [out], out)
            return out

        if approximate == "tanh":
            cube = step("Mul", [step("Mul", [x, x], "square"), x], "cube")
            inner = step("Add", [x, step("Mul", [cube, const("coeff", 0.044715)], "scaled_cube")], "inner")
            core = step("Tanh", [step("Mul", [inner, const("sqrt_2_over_pi", math.sqrt(2 / math.pi))], "arg")], "tanh")
        else:
            core = step("Erf", [step("Mul", [x, const("inv_sqrt2", 1 / math.sqrt(2))], "arg")], "erf")
        half = step("Mul", [x, const("half", 0.5)], "half_x")
        gate = step("Add", [core, const("one", 1.0)], "one_plus")
        writer.node("Mul", [half, gate], list(layer.outputs), name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        approximate = reader.attrs(node).get("approximate", "none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        return reader.layer(node, self.name, {"approximate": approximate}) if approximate in APPROXIMATIONS else None
