"""RNN: torch's nn.RNN (Elman, tanh or relu; batch first), ONNX's RNN operator. See
``recurrent.py`` for what every recurrent type shares; one gate, so no gate order.
Extra param: nonlinearity ("tanh" default, or "relu")."""

from __future__ import annotations

from typing import Any

from surgery.errors import ModelFormatError
from surgery.ir import Layer, Shape
from surgery.layers.recurrent import RecurrentType
from surgery.layers.registry import register_layer
from surgery.lazy_torch import nn

NONLINEARITIES = {"tanh": "Tanh", "relu": "Relu"}


@register_layer
class RNN(RecurrentType):
    """Elman recurrent layer (see the module docstring)."""

    name = "RNN"
    gates, states = 1, 1
    torch_class = "torch.nn.RNN"
    torch_modules = ("torch.nn.RNN",)
    onnx_op = "RNN"
    onnx_ops = ("RNN",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if layer.params.get("nonlinearity", "tanh") not in NONLINEARITIES:
            raise ModelFormatError(
                f"unknown nonlinearity {layer.params['nonlinearity']!r}", fix='use "tanh" or "relu"', subject=layer.name
            )
        return super().infer_shapes(layer, in_shapes)

    def torch_kwargs(self, layer: Layer, features: int) -> dict[str, Any]:
        return {**super().torch_kwargs(layer, features), "nonlinearity": layer.params.get("nonlinearity", "tanh")}

    def torch_extra(self, module: nn.Module) -> dict[str, Any]:
        return {"nonlinearity": module.nonlinearity}

    def onnx_attrs(self, layer: Layer) -> dict[str, Any]:
        activation = NONLINEARITIES[layer.params.get("nonlinearity", "tanh")]
        return {"activations": [activation] * (2 if layer.params["bidirectional"] else 1)}
