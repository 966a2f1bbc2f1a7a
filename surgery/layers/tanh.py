"""TanH: elementwise `y = tanh(x)`, no params, no blobs."""

from __future__ import annotations

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class TanH(ActivationType):
    name = "TanH"
    module_class = "torch.nn.Tanh"
    torch_modules = ("torch.nn.Tanh",)
    torch_functions = ("torch.tanh", "torch.nn.functional.tanh", "tanh")
    onnx_op = "Tanh"
    onnx_ops = ("Tanh",)

    def to_caffe(self, layer, writer) -> None:
        writer.layer(layer, "TanH")
