"""Sigmoid: elementwise `y = 1 / (1 + exp(-x))`, no params, no blobs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class Sigmoid(ActivationType):
    name = "Sigmoid"
    module_class = nn.Sigmoid
    torch_modules = (nn.Sigmoid,)
    torch_functions = (torch.sigmoid, F.sigmoid, "sigmoid")
    onnx_op = "Sigmoid"
    onnx_ops = ("Sigmoid",)

    def to_caffe(self, layer, writer) -> None:
        writer.layer(layer, "Sigmoid")
