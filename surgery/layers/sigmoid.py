"""Sigmoid: elementwise `y = 1 / (1 + exp(-x))`, no params, no blobs."""

from __future__ import annotations

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class Sigmoid(ActivationType):
    name = "Sigmoid"
    module_class = "torch.nn.Sigmoid"
    torch_modules = ("torch.nn.Sigmoid",)
    torch_functions = ("torch.sigmoid", "torch.nn.functional.sigmoid", "sigmoid")
    onnx_op = "Sigmoid"
    onnx_ops = ("Sigmoid",)

    def to_caffe(self, layer, writer) -> None:
        writer.layer(layer, "Sigmoid")
