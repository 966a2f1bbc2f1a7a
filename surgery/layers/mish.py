"""Mish: elementwise `y = x * tanh(softplus(x))`, no params, no blobs.

ONNX has a Mish operator from opset 18; below that it is written as its definition
(Softplus, Tanh, Mul), the Mul carrying the layer's name.
"""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer
from surgery.layers.registry import ActivationType, register_layer

MISH_OPSET = 18


@register_layer
class Mish(ActivationType):
    name = "Mish"
    module_class = "torch.nn.Mish"
    torch_modules = ("torch.nn.Mish",)
    torch_functions = ("torch.nn.functional.mish",)
    onnx_ops = ("Mish",)

    onnx_op = "Mish"
    onnx_native_opset = MISH_OPSET

    def to_onnx_formula(self, layer: Layer, writer: Any) -> None:
        soft, squashed = f"{layer.name}/softplus", f"{layer.name}/tanh"
        writer.node("Softplus", [layer.inputs[0]], [soft], soft)
        writer.node("Tanh", [soft], [squashed], squashed)
        writer.node("Mul", [layer.inputs[0], squashed], list(layer.outputs), layer.name)
