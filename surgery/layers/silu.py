"""SiLU (Swish): elementwise `y = x * sigmoid(x)`, no params, no blobs.

ONNX has a Swish operator only from opset 24; below that it is written as its
definition, a Sigmoid and a Mul, the Mul carrying the layer's name.
"""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer
from surgery.layers.registry import ActivationType, register_layer

SWISH_OPSET = 24


@register_layer
class SiLU(ActivationType):
    name = "SiLU"
    module_class = "torch.nn.SiLU"
    torch_modules = ("torch.nn.SiLU",)
    torch_functions = ("torch.nn.functional.silu",)
    onnx_ops = ("Swish",)

    onnx_op = "Swish"
    onnx_native_opset = SWISH_OPSET

    def to_onnx_formula(self, layer: Layer, writer: Any) -> None:
        gate = f"{layer.name}/sigmoid"
        writer.node("Sigmoid", [layer.inputs[0]], [gate], gate)
        writer.node("Mul", [layer.inputs[0], gate], list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if reader.attrs(node).get("alpha", 1.0) != 1.0:
            return None  # x * sigmoid(alpha x) with another alpha is not torch's SiLU
        return reader.layer(node, self.name, {})
