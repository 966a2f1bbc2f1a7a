"""Keras LSTM and GRU as the IR's recurrent layers (torch's batch-first form).

Gate order is a per-format fact: Keras stores LSTM gates ``i, f, c, o`` (torch's
``i, f, g, o``: the same blocks) and GRU gates ``z, r, h`` (torch's ``r, z, n``: the first
two swapped). Keras keeps one input bias for LSTM (torch's recurrent bias is then 0); a
GRU with ``reset_after`` (Keras 3's default) has both, as torch does. A GRU without it
applies the reset gate before the recurrent product, which torch's GRU cannot.
"""

from __future__ import annotations

from surgery.importers.keras.activations import activation_name
from surgery.importers.keras.builder import Builder, Call, Tensor, keras_layer
from surgery.ir import ParamBlob
from surgery.layers.recurrent import recurrent_params
from surgery.lazy_torch import torch

#: torch's gate blocks as Keras gate blocks, per type
_TORCH_FROM_KERAS = {"LSTM": (0, 1, 2, 3), "GRU": (1, 0, 2)}


def _gates(matrix: torch.Tensor, order: tuple[int, ...], units: int) -> torch.Tensor:
    """Keras ``(in, G*H)`` (or a bias ``(G*H,)``) to torch's gate order, transposed."""
    blocks = [matrix[..., g * units : (g + 1) * units] for g in order]
    return torch.cat(blocks, dim=-1).t()  # t() leaves a bias (1-D) as it is


def _check(call: Call, x: Tensor, backwards: bool = False) -> None:
    if x.rank != 3 or x.channel_at is not None:
        raise call.refuse(f"expects a (batch, steps, features) sequence, got shape {list(x.shape)}")
    for key, wanted in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        if activation_name(call.get(key, wanted)) != wanted:
            raise call.refuse(f"{key} {call.get(key)!r} has no torch form (torch's is {wanted})")
    for key in ("stateful", "return_state", "time_major"):
        if call.get(key):
            raise call.refuse(f"{key}: true has no mapping")
    if bool(call.get("go_backwards")) != backwards:
        raise call.refuse(
            f"go_backwards: {str(not backwards).lower()} has no mapping"
            + (" (outside a Bidirectional wrapper)" if not backwards else "")
        )


def _blobs(b: Builder, call: Call, features: int, suffix: str = "") -> dict[str, ParamBlob]:
    """One direction's blobs, in torch's gate order (roles ``weight_ih_l0{suffix}``...)."""
    kind, units = call.class_name, int(call.get("units"))
    gates, order = (4 if kind == "LSTM" else 3), _TORCH_FROM_KERAS[kind]
    kernel = b.variable(call, 0, "kernel", (features, gates * units), attribute="cell")
    recurrent_kernel = b.variable(call, 1, "recurrent_kernel", (units, gates * units), attribute="cell")
    blobs = {
        f"weight_ih_l0{suffix}": b.param(kernel, lambda k: _gates(k, order, units), (gates * units, features)),
        f"weight_hh_l0{suffix}": b.param(recurrent_kernel, lambda k: _gates(k, order, units), (gates * units, units)),
    }
    if not call.get("use_bias", True):
        return blobs
    if kind == "GRU" and not call.get("reset_after", True):
        raise call.refuse(
            "reset_after: false (the reset gate before the recurrent product) has no torch form",
            fix="build the GRU with reset_after=True (Keras 3's default)",
        )
    bias = b.variable(call, 2, "bias", (2, gates * units) if kind == "GRU" else (gates * units,), attribute="cell")
    if kind == "GRU":
        blobs[f"bias_ih_l0{suffix}"] = b.param(bias, lambda v: _gates(v[0], order, units), (gates * units,))
        blobs[f"bias_hh_l0{suffix}"] = b.param(bias, lambda v: _gates(v[1], order, units), (gates * units,))
    else:
        blobs[f"bias_ih_l0{suffix}"] = b.param(bias, lambda v: _gates(v, order, units), (gates * units,))
        blobs[f"bias_hh_l0{suffix}"] = ParamBlob.filled((gates * units,), 0.0)
    return blobs


def _add(b: Builder, name: str, kind: str, forward: Call, x: Tensor, blobs: dict, directions: int) -> Tensor:
    units, sequences = int(forward.get("units")), bool(forward.get("return_sequences", False))
    params = recurrent_params(
        units, bidirectional=directions == 2, return_sequences=sequences, bias_term=bool(forward.get("use_bias", True))
    )
    out = b.add(name, kind, [x.blob], params, blobs)
    width = directions * units
    return b.tensor(out, (x.shape[0], x.shape[1], width) if sequences else (x.shape[0], width))


@keras_layer("LSTM", "GRU")
def recurrent(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """One recurrent layer (dropout and recurrent_dropout act in training only: Keras's
    recurrent dropout has no torch form, so a trainable model does without it)."""
    x = inputs[0]
    _check(call, x)
    return _add(b, call.name, call.class_name, call, x, _blobs(b, call, x.shape[-1]), 1)


@keras_layer("Bidirectional")
def bidirectional(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """A bidirectional LSTM / GRU whose directions' outputs are concatenated (torch's
    bidirectional layer, its backward weights in the ``_reverse`` roles)."""
    x = inputs[0]
    if call.get("merge_mode", "concat") != "concat":
        raise call.refuse(f"merge_mode {call.get('merge_mode')!r} has no mapping (torch concatenates)")
    calls = []
    for key, attr in (("layer", "forward_layer"), ("backward_layer", "backward_layer")):
        entry = call.get(key) or {}
        if entry.get("class_name") not in _TORCH_FROM_KERAS:
            raise call.refuse(f"wraps a {entry.get('class_name')}; only LSTM and GRU have a mapping")
        config = entry["config"]
        scope = call.scope.attribute(attr, config["name"]) if call.scope is not None else None
        calls.append(Call(call.name, entry["class_name"], config, scope))
    forward, backward = calls
    if backward.class_name != forward.class_name or backward.get("units") != forward.get("units"):
        raise call.refuse("its two directions differ in type or size")
    _check(forward, x)
    _check(backward, x, backwards=True)
    blobs = _blobs(b, forward, x.shape[-1]) | _blobs(b, backward, x.shape[-1], "_reverse")
    return _add(b, call.name, forward.class_name, forward, x, blobs, 2)
