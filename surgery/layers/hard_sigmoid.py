"""HardSigmoid: elementwise `y = relu6(x + 3) / 6`, no params, no blobs."""

from __future__ import annotations

from surgery.layers.registry import ActivationType, register_layer


@register_layer
class HardSigmoid(ActivationType):
    name = "HardSigmoid"
    module_class = "torch.nn.Hardsigmoid"
    torch_modules = ("torch.nn.Hardsigmoid",)
    torch_functions = ("torch.nn.functional.hardsigmoid",)
    onnx_op = "HardSigmoid"
    onnx_ops = ("HardSigmoid",)

    def to_onnx(self, layer, writer) -> None:
        # torch's hardsigmoid is relu6(x + 3) / 6: ONNX HardSigmoid with these constants.
        writer.node("HardSigmoid", list(layer.inputs), list(layer.outputs), layer.name, alpha=1 / 6, beta=0.5)

    def from_onnx(self, node, reader):
        attrs = reader.attrs(node)
        if abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6:
            return None
        return reader.layer(node, self.name, {})
