"""Blobs for a new layer: shapes from its layer type, values from a seeded filler.

Shared by the spec operations and by importers that create layers a source has no
weights for (a Caffe net without its caffemodel), so it lives on the layer floor.
"""

from __future__ import annotations

import functools
from typing import Any, cast

from surgery.errors import SpecError
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.ir.budget import check_bytes, tensor_bytes
from surgery.layers.registry import layer_type
from surgery.lazy_torch import torch
from surgery.math.fillers import Filler, blob_generator, fill


def init_new_blobs(
    net: Net,
    layer: Layer,
    seed: int,
    fillers: dict[str, Filler] | None = None,
    param_specs: list[tuple[float, float]] | None = None,
    allow_zero: bool = False,
) -> list[str]:
    """Create every blob ``layer`` needs (it must already be in ``net``), filled from
    ``fillers`` or the type's non-zero default. Returns report notes.

    Raises:
        SpecError: an all-zero weight filler without ``allow_zero`` (promise 2: no
            silent zero), or too many ``param`` entries.
    """
    kind = layer_type(layer.type)
    wanted = kind.param_shapes(layer, net.input_shapes(layer.name))
    # Fillers draw in float64, then cast to float32: 12 bytes per value at the peak.
    total = sum(tensor_bytes(shape, itemsize=12) for shape in wanted.values())
    check_bytes(
        f"layer {layer.name!r} ({layer.type}): its new weights {list(wanted.values())}", total, subject=layer.name
    )
    fillers = fillers or {}
    specs = param_specs or []
    if len(specs) > len(wanted):
        raise SpecError(
            f"layer {layer.name!r} has {len(specs)} param {{ }} entries but only {len(wanted)} blobs",
            subject=layer.name,
        )
    # trainable_roles reads which roles there are, not the blobs themselves
    trainable = set(kind.trainable_roles(Layer(layer.name, layer.type, blobs=cast(Any, dict.fromkeys(wanted)))))
    notes = []
    for position, (role, shape) in enumerate(wanted.items()):
        filler = fillers.get(role) or Filler.from_dict(kind.default_filler(layer, role))
        if role == "weight" and filler.is_all_zero and not allow_zero:
            raise SpecError(
                f"layer {layer.name!r} would start with an all-zero weight ({filler.describe()})",
                fix="use a random filler (xavier, msra, gaussian), or say allow_zero if you really mean it",
                subject=layer.name,
            )
        described = filler.describe() + ("" if role in fillers else kind.default_fill_note(role))
        lr_mult, decay_mult = specs[position] if position < len(specs) else (1.0, 1.0)
        # Filled on first use: plan and inspect never pay for it. The generator is seeded
        # from the blob's name at creation, so the values do not depend on when.
        layer.blobs[role] = ParamBlob.lazy(
            tuple(shape),
            "float32",
            functools.partial(
                _filled,
                filler,
                tuple(shape),
                seed,
                layer.name,
                role,
                None if role in fillers else (layer.type, dict(layer.params)),
            ),
            lr_mult=lr_mult,
            decay_mult=decay_mult,
            trainable=role in trainable,
            origin=Origin("filler", f"{described}, seed {seed}"),
        )
        notes.append(f"{role} {tuple(shape)} <- {described}")
    net.invalidate_layer(layer.name)
    return notes


def _filled(
    filler: Filler, shape: tuple[int, ...], seed: int, layer: str, role: str, default: tuple[str, dict] | None
) -> torch.Tensor:
    tensor = fill(filler, shape, blob_generator(seed, layer, role))
    if default is not None:  # the type's own default filler: let the type adjust it
        type_name, params = default
        tensor = layer_type(type_name).adjust_default_fill(params, role, tensor)
    return tensor
