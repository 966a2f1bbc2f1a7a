"""GRU: torch's nn.GRU (batch first), ONNX's GRU operator. See ``recurrent.py`` for the
params, inputs, outputs and blob roles every recurrent type shares.

Gate order (tested numerically against each runtime): the IR keeps torch's ``r, z, n``
(reset, update, new); ONNX's operator wants ``z, r, h``; Keras stores ``z, r, h``.
torch applies the reset gate after the recurrent product (``r * (W_hn h + b_hn)``),
which is ONNX's ``linear_before_reset = 1``.
"""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer
from surgery.layers.recurrent import RecurrentType
from surgery.layers.registry import register_layer

TORCH_GATES = ("r", "z", "n")
#: ONNX's z, r, h as torch gate indices
ONNX_FROM_TORCH = (1, 0, 2)


@register_layer
class GRU(RecurrentType):
    """Gated recurrent unit (see the module docstring)."""

    name = "GRU"
    gates, states = 3, 1
    torch_class = "torch.nn.GRU"
    torch_modules = ("torch.nn.GRU",)
    onnx_op = "GRU"
    onnx_ops = ("GRU",)
    onnx_gate_order = ONNX_FROM_TORCH

    def onnx_attrs(self, layer: Layer) -> dict[str, Any]:
        return {"linear_before_reset": 1}
