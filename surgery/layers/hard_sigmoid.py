"""HardSigmoid: elementwise `y = relu6(x + 3) / 6`, no params, no blobs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class HardSigmoid(ActivationType):
    name = "HardSigmoid"
    module_class = nn.Hardsigmoid
    torch_modules = (nn.Hardsigmoid,)
    torch_functions = (F.hardsigmoid,)
