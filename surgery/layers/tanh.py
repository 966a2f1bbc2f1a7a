"""TanH: elementwise `y = tanh(x)`, no params, no blobs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class TanH(ActivationType):
    name = "TanH"
    module_class = nn.Tanh
    torch_modules = (nn.Tanh,)
    torch_functions = (torch.tanh, F.tanh, "tanh")
    onnx_op = "Tanh"
    onnx_ops = ("Tanh",)

    def to_caffe(self, layer, writer) -> None:
        writer.layer(layer, "TanH")
