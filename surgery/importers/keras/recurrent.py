"""Keras LSTM and GRU as the IR's recurrent layers (torch's batch-first form).

Gate order is a per-format fact: Keras stores LSTM gates ``i, f, c, o`` (torch's
``i, f, g, o``: the same blocks) and GRU gates ``z, r, h`` (torch's ``r, z, n``: the first
two swapped). Keras keeps one input bias for LSTM (torch's recurrent bias is then 0); a
GRU with ``reset_after`` (Keras 3's default) has both, as torch does. A GRU without it
applies the reset gate before the recurrent product, which torch's GRU cannot.
"""

from __future__ import annotations

import torch

from surgery.importers.keras.activations import activation_name
from surgery.importers.keras.builder import Builder, Call, Tensor, keras_layer
from surgery.ir import ParamBlob
from surgery.layers.recurrent import recurrent_params

#: torch's gate blocks as Keras gate blocks, per type
_TORCH_FROM_KERAS = {"LSTM": (0, 1, 2, 3), "GRU": (1, 0, 2)}


def _gates(matrix: torch.Tensor, order: tuple[int, ...], units: int) -> torch.Tensor:
    """Keras ``(in, G*H)`` (or a bias ``(G*H,)``) to torch's gate order, transposed."""
    blocks = [matrix[..., g * units:(g + 1) * units] for g in order]
    return torch.cat(blocks, dim=-1).t()  # t() leaves a bias (1-D) as it is


def _check(call: Call, x: Tensor) -> None:
    if x.rank != 3 or x.channel_at is not None:
        raise call.refuse(f"expects a (batch, steps, features) sequence, got shape {list(x.shape)}")
    for key, wanted in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if activation_name(call.get(key, wanted)) != wanted:
            raise call.refuse(f"{key} {call.get(key)!r} has no torch form (torch's is {wanted})")
    for key in ("go_backwards", "stateful", "return_state", "time_major"):
        if call.get(key):
            raise call.refuse(f"{key}: true has no mapping")
    if call.get("use_cudnn") not in (None, "auto", True, False):
        raise call.refuse(f"use_cudnn {call.get('use_cudnn')!r}")


@keras_layer("LSTM", "GRU")
def recurrent(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """One recurrent layer (dropout and recurrent_dropout act in training only: Keras's
    recurrent dropout has no torch form, so a trainable model does without it)."""
    x = inputs[0]
    _check(call, x)
    kind, units, features = call.class_name, int(call.get("units")), x.shape[-1]
    gates = 4 if kind == "LSTM" else 3
    order = _TORCH_FROM_KERAS[kind]
    use_bias = bool(call.get("use_bias", True))
    kernel = b.variable(call, 0, "kernel", (features, gates * units), attribute="cell")
    recurrent_kernel = b.variable(call, 1, "recurrent_kernel", (units, gates * units), attribute="cell")
    blobs = {"weight_ih_l0": b.param(kernel, lambda k: _gates(k, order, units), (gates * units, features)),
             "weight_hh_l0": b.param(recurrent_kernel, lambda k: _gates(k, order, units), (gates * units, units))}
    if use_bias:
        if kind == "GRU" and not call.get("reset_after", True):
            raise call.refuse("reset_after: false (the reset gate before the recurrent product) has no torch form",
                              fix="build the GRU with reset_after=True (Keras 3's default)")
        bias_shape = (2, gates * units) if kind == "GRU" else (gates * units,)
        bias = b.variable(call, 2, "bias", bias_shape, attribute="cell")
        if kind == "GRU":
            blobs["bias_ih_l0"] = b.param(bias, lambda v: _gates(v[0], order, units), (gates * units,))
            blobs["bias_hh_l0"] = b.param(bias, lambda v: _gates(v[1], order, units), (gates * units,))
        else:
            blobs["bias_ih_l0"] = b.param(bias, lambda v: _gates(v, order, units), (gates * units,))
            blobs["bias_hh_l0"] = ParamBlob.from_tensor(torch.zeros(gates * units))
    sequences = bool(call.get("return_sequences", False))
    params = recurrent_params(units, return_sequences=sequences, bias_term=use_bias)
    out = b.add(call.name, kind, [x.blob], params, blobs)
    shape = (x.shape[0], x.shape[1], units) if sequences else (x.shape[0], units)
    return b.tensor(out, shape)
