"""HardSwish: elementwise `y = x * relu6(x + 3) / 6`, no params, no blobs."""

from __future__ import annotations

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class HardSwish(ActivationType):
    name = "HardSwish"
    module_class = "torch.nn.Hardswish"
    torch_modules = ("torch.nn.Hardswish",)
    torch_functions = ("torch.nn.functional.hardswish",)
    onnx_op = "HardSwish"
    onnx_ops = ("HardSwish",)
