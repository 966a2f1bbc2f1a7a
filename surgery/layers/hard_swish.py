"""HardSwish: elementwise `y = x * relu6(x + 3) / 6`, no params, no blobs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class HardSwish(ActivationType):
    name = "HardSwish"
    module_class = nn.Hardswish
    torch_modules = (nn.Hardswish,)
    torch_functions = (F.hardswish,)
    onnx_op = "HardSwish"
    onnx_ops = ("HardSwish",)
