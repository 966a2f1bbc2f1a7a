"""What the consumers of a resized layer do (fc7 4096 -> 1024 changes fc8's input).

The walk goes downstream from the resized layer through every layer type that lets a
channel-count change flow through (``LayerType.passes_resize``: activations, pooling,
Flatten, and per-channel layers such as BatchNorm and Scale) and stops at the first
layer of any other kind with parameters (the next Convolution / InnerProduct). Each
layer met whose blobs no longer fit is fixed by the spec's policy, in execution order.
"""

from __future__ import annotations

import functools

from surgery.errors import SpecError
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.layers import layer_type
from surgery.layers.new_blobs import init_new_blobs
from surgery.lazy_torch import torch
from surgery.ops.base import REINITIALISED, Action, OpContext

REINIT, SLICE, ERROR = 0, 1, 2


def _affected(net: Net, resized: Layer) -> list[Layer]:
    """The layers downstream whose parameters may depend on the resized size, in
    execution order."""
    found, frontier, seen = set(), list(resized.outputs), set()
    while frontier:
        blob = frontier.pop()
        for reader, _ in net.consumers(blob):
            if reader.name in seen:
                continue
            seen.add(reader.name)
            if reader.blobs:
                found.add(reader.name)
            if layer_type(reader.type).passes_resize:
                frontier += reader.outputs
    return [layer for layer in net.layers() if layer.name in found]


def _pad_value(layer: Layer, role: str) -> float:
    """What new entries of a sliced/padded blob hold: the type's constant default (1 for
    a BatchNorm's scale and variance: new channels pass through unchanged), else 0 (a
    new input channel adds nothing)."""
    filler = layer_type(layer.type).default_filler(layer, role)
    return float(filler.get("value", 0.0)) if filler.get("type") == "constant" else 0.0


def _slice(layer: Layer, wanted: dict[str, tuple[int, ...]]) -> None:
    """Keep the weights for the channels that remain; new ones get :func:`_pad_value`."""
    for role, blob in layer.blobs.items():
        target = wanted.get(role, blob.shape)
        if blob.shape == target:
            continue
        compute = functools.partial(_sliced, blob.snapshot(), tuple(target), _pad_value(layer, role))
        blob.derive(compute, Origin("resized", f"sliced/padded from {tuple(blob.shape)}"), shape=target)


def _sliced(blob: ParamBlob, target: tuple[int, ...], pad: float) -> torch.Tensor:
    """``blob``'s values cut or padded (with ``pad``) to ``target``, on first use."""
    data = torch.full(target, pad, dtype=blob.dtype)
    index = tuple(slice(0, min(a, b)) for a, b in zip(blob.shape, target))
    data[index] = blob.data[index]
    return data


def propagate_resize(net: Net, resized: Layer, policy: int, ctx: OpContext) -> list[Action]:
    """Fix every consumer whose parameters no longer fit ``resized``'s new output."""
    actions = []
    net.invalidate()
    for layer in _affected(net, resized):
        in_shapes = net.input_shapes(layer.name)
        wanted = layer_type(layer.type).param_shapes(layer, in_shapes)
        if all(layer.blobs[r].shape == s for r, s in wanted.items() if r in layer.blobs):
            continue
        if policy == ERROR:
            raise SpecError(
                f"resizing {resized.name!r} changes the input of {layer.name!r}",
                subject=resized.name,
                fix="set propagate: REINIT or SLICE, or change that layer too",
            )
        if policy == SLICE:
            _slice(layer, wanted)
            actions.append(
                Action("propagate", layer.name, "resized", f"weights sliced/padded to {resized.name}'s new size")
            )
        else:
            mults = [(b.lr_mult, b.decay_mult) for b in layer.blobs.values() if b.trainable]
            layer.blobs = {}
            notes = init_new_blobs(net, layer, ctx.seed, None, mults)
            actions.append(
                Action(
                    "propagate",
                    layer.name,
                    REINITIALISED,
                    f"its input changed with {resized.name}: " + "; ".join(notes),
                )
            )
        net.invalidate()
    return actions
