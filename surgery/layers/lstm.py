"""LSTM: torch's nn.LSTM (batch first), ONNX's LSTM operator. See ``recurrent.py`` for
the params, inputs, outputs and blob roles every recurrent type shares.

Gate order is a per-format fact (each mapping is tested numerically against that
runtime): the IR keeps torch's ``i, f, g, o`` (input, forget, cell candidate, output);
ONNX's operator wants ``i, o, f, c``; Keras stores ``i, f, c, o`` and Caffe ``i, f, o, g``
(surgery writes no Caffe LSTM: Caffe's layer is time-major with a `cont` input).

A new LSTM's biases start at 0 except the forget gate's input bias, 1 (the usual
choice: the cell keeps its memory until it learns to forget). A `bias_filler` in the
spec replaces that.
"""

from __future__ import annotations

from typing import Any

from surgery.layers.recurrent import RecurrentType
from surgery.layers.registry import register_layer
from surgery.lazy_torch import torch

TORCH_GATES = ("i", "f", "g", "o")
#: ONNX's i, o, f, c as torch gate indices
ONNX_FROM_TORCH = (0, 3, 1, 2)
FORGET = TORCH_GATES.index("f")


@register_layer
class LSTM(RecurrentType):
    """Long short-term memory layer (see the module docstring)."""

    name = "LSTM"
    gates, states = 4, 2
    torch_class = "torch.nn.LSTM"
    torch_modules = ("torch.nn.LSTM",)
    onnx_op = "LSTM"
    onnx_ops = ("LSTM",)
    onnx_gate_order = ONNX_FROM_TORCH

    def adjust_default_fill(self, params: dict[str, Any], role: str, tensor: torch.Tensor) -> torch.Tensor:
        if role.startswith("bias_ih"):
            hidden = params["num_output"]
            tensor = tensor.clone()
            tensor[FORGET * hidden : (FORGET + 1) * hidden] = 1.0
        return tensor

    def default_fill_note(self, role: str) -> str:
        return ", forget gate 1" if role.startswith("bias_ih") else ""
