"""``lora``: low-rank adapters on the selected InnerProduct and Convolution layers (see
:mod:`surgery.layers.lora` for what an adapted layer computes and how it is emitted)."""

from __future__ import annotations

import functools
import math
from typing import Any

from surgery.errors import SpecError
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.ir.blob import check_multiplier
from surgery.layers import layer_type
from surgery.layers import lora as adapters
from surgery.lazy_torch import torch
from surgery.math.fillers import Filler, blob_generator, fill
from surgery.ops.base import DERIVED, Action, OpContext, register_op
from surgery.ops.selectors import select

ADAPTABLE = ("InnerProduct", "Convolution")


def _settings(op: Any) -> dict[str, Any]:
    if op.rank < 1:
        raise SpecError(f"lora rank must be at least 1, got {op.rank}", subject="rank")
    if not math.isfinite(op.alpha) or op.alpha <= 0:
        raise SpecError(f"lora alpha must be a positive number, got {op.alpha}", subject="alpha")
    if not 0 <= op.dropout < 1:
        raise SpecError(f"lora dropout must be in [0, 1), got {op.dropout}", subject="dropout")
    check_multiplier(op.lr_mult, "lr_mult")
    check_multiplier(op.decay_mult, "decay_mult")
    return {"rank": int(op.rank), "alpha": float(op.alpha), "dropout": float(op.dropout), "use_rslora": op.use_rslora}


def _targets(net: Net, op: Any) -> list[str]:
    if not (op.layer or op.match or op.regex or op.HasField("up_to")):
        raise SpecError("lora selects no layers", fix="add layer, match, regex or up_to")
    names = select(
        net, names=op.layer, globs=op.match, regexes=op.regex, up_to_layer=op.up_to if op.HasField("up_to") else None
    )
    for name in op.layer:  # a layer named outright must be one an adapter fits
        if name in net and net.layer(name).type not in ADAPTABLE:
            raise SpecError(
                f"layer {name!r} is a {net.layer(name).type}; lora adapts InnerProduct and Convolution layers",
                subject=name,
            )
    targets = [name for name in names if net.layer(name).type in ADAPTABLE]
    if not targets:
        raise SpecError(
            f"lora selects {len(names)} layer(s), none of them an InnerProduct or a Convolution",
            fix='select the projections to adapt, e.g. match: "*.attention.*_proj"',
        )
    return targets


def _random_a(shape: tuple[int, ...], bound: float, seed: int, layer: str) -> torch.Tensor:
    return fill(Filler("uniform", min=-bound, max=bound), shape, blob_generator(seed, layer, "lora_A"))


def _zeros(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape)


def _adapt(net: Net, layer: Layer, settings: dict[str, Any], op: Any, seed: int) -> str:
    if "lora" in layer.params:
        raise SpecError(f"layer {layer.name!r} has an adapter already", subject=layer.name)
    layer.params["lora"] = dict(settings)
    adapters.check(layer)
    shapes = layer_type(layer.type).param_shapes(layer, net.input_shapes(layer.name))
    a_shape, b_shape = tuple(shapes["lora_A"]), tuple(shapes["lora_B"])
    bound = 1 / math.sqrt(math.prod(a_shape[1:]))  # PEFT's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), ..)
    mults = {"lr_mult": op.lr_mult, "decay_mult": op.decay_mult, "trainable": True}
    layer.blobs["lora_A"] = ParamBlob.lazy(
        a_shape,
        "float32",
        functools.partial(_random_a, a_shape, bound, seed, layer.name),
        origin=Origin("filler", f"uniform({-bound:.4g}, {bound:.4g}) (PEFT's kaiming_uniform, a=sqrt(5)), seed {seed}"),
        **mults,
    )
    layer.blobs["lora_B"] = ParamBlob.lazy(
        b_shape,
        "float32",
        functools.partial(_zeros, b_shape),
        origin=Origin(
            "filler", "constant(0): B starts at zero, so the adapted layer computes what it did until it trains"
        ),
        **mults,
    )
    frozen = ""
    if not op.train_base:
        for role in ("weight", "bias"):
            if role in layer.blobs:
                layer.blobs[role].lr_mult = 0.0
        frozen = "; its own weights frozen (lr_mult 0)"
    scale = adapters.scale(settings)
    return f"rank {settings['rank']}, scale {scale:g}: lora_A {list(a_shape)}, lora_B {list(b_shape)}{frozen}"


def _replace(layer: Layer, role: str, tensor: torch.Tensor, detail: str) -> None:
    """The layer's ``role`` blob, its values now ``tensor`` (its multipliers kept)."""
    from surgery.errors import ModelFormatError

    blob = layer.blobs.get(role)
    if blob is None or tuple(tensor.shape) != tuple(blob.shape):
        have = "no such blob" if blob is None else f"shape {list(blob.shape)}"
        raise ModelFormatError(
            f"the PEFT adapter holds {layer.name}.{role} of shape {list(tensor.shape)}; the net's layer has {have}",
            fix="use the adapter trained on this model (the source the spec names)",
        )
    layer.blobs[role] = ParamBlob.from_tensor(
        tensor.to(torch.float32),
        lr_mult=blob.lr_mult,
        decay_mult=blob.decay_mult,
        trainable=blob.trainable,
        origin=Origin("source", detail),
    )


def _from_peft(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """The adapters (and modules_to_save) of a folder PEFT wrote, onto the layers it names."""
    from pathlib import Path

    from surgery.emitters.peft import alpha_for, layer_tensors, read_adapter
    from surgery.errors import did_you_mean

    given = [f for f in ("up_to", "rank", "alpha", "dropout", "use_rslora") if op.HasField(f)]
    if op.layer or op.match or op.regex or given:
        raise SpecError(
            "lora from_peft takes its layers, rank, alpha and dropout from the adapter's config",
            fix="remove the selectors and settings from this lora edit (lr_mult, decay_mult and train_base stay)",
        )
    folder = (ctx.base_dir or Path.cwd()) / op.from_peft
    config, tensors = read_adapter(folder)
    found, saved = layer_tensors(tensors)
    actions = []
    for name in [*found, *saved]:
        if name not in net:
            raise SpecError(
                f"the PEFT adapter in {op.from_peft!r} names layer {name!r}, which the net does not have",
                fix=did_you_mean(name, net.layer_names()) or "use the adapter trained on the source the spec names",
                subject=op.from_peft,
            )
    for name, pair in found.items():
        layer = net.layer(name)
        if layer.type not in ADAPTABLE:
            raise SpecError(f"the PEFT adapter adapts {name!r}, a {layer.type} here", subject=op.from_peft)
        settings = {
            "rank": int(pair["lora_A"].shape[0]),
            "alpha": alpha_for(config, name),
            "dropout": float(config.get("lora_dropout") or 0.0),
            "use_rslora": bool(config.get("use_rslora")),
        }
        detail = _adapt(net, layer, settings, op, ctx.seed)
        for role in adapters.ROLES:
            _replace(layer, role, pair[role], f"PEFT adapter {op.from_peft}")
        actions.append(Action("lora", name, DERIVED, f"{detail}; from {op.from_peft}"))
    for name, roles in saved.items():
        layer = net.layer(name)
        for role, tensor in roles.items():
            _replace(layer, role, tensor, f"PEFT adapter {op.from_peft} (modules_to_save)")
        actions.append(Action("lora", name, DERIVED, f"weights from {op.from_peft} (modules_to_save: it trains)"))
    return actions


@register_op("lora")
def lora(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Add a low-rank adapter to every selected InnerProduct and Convolution, or read
    the adapters a folder PEFT wrote (``from_peft``)."""
    if op.from_peft:
        return _from_peft(net, op, ctx)
    settings = _settings(op)
    return [
        Action("lora", name, DERIVED, _adapt(net, net.layer(name), settings, op, ctx.seed))
        for name in _targets(net, op)
    ]
