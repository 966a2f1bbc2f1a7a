"""``fold_batchnorm``: Convolution / InnerProduct + BatchNorm (+ Caffe's Scale) into one
layer, for deploy exports (the math is in ``surgery.math.batchnorm_fold``)."""

from __future__ import annotations

import functools
from typing import Any

from surgery.errors import SpecError
from surgery.ir import Layer, Net, Origin
from surgery.ir.blob import Inputs
from surgery.math.batchnorm_fold import fold_batchnorm as fold
from surgery.ops.base import DERIVED, DROPPED, Action, OpContext, register_op
from surgery.ops.selectors import match_name

FOLDABLE = ("Convolution", "InnerProduct")


def _chain(net: Net, layer: Layer) -> tuple[Layer, Layer | None] | str:
    """(BatchNorm, Scale or None) after ``layer``, or the reason there is none."""
    consumers = net.consumers(layer.outputs[0])
    if len(consumers) != 1 or consumers[0][0].type != "BatchNorm":
        kinds = ", ".join(f"{c.name} ({c.type})" for c, _ in consumers) or "nothing"
        return f"its output feeds {kinds}, not a single BatchNorm"
    bn = consumers[0][0]
    after = net.consumers(bn.outputs[0])
    scale = after[0][0] if len(after) == 1 and after[0][0].type == "Scale" and "bias" in after[0][0].blobs else None
    if layer.outputs[0] in net.outputs:
        return "its output is a net output"
    return bn, scale


def _fold_one(net: Net, layer: Layer, bn: Layer, scale: Layer | None) -> list[Action]:
    if bn.params.get("use_global_stats") is False:
        raise SpecError(
            f"BatchNorm {bn.name!r} normalises with batch statistics; folding needs fixed ones", subject=layer.name
        )
    # the folded values are computed when first used (apply), from the blobs as they are
    # now: plan reads no weights
    inputs = Inputs(layer=layer.blobs, bn=bn.blobs, scale=scale.blobs if scale is not None else {})
    eps = float(bn.params.get("eps", 1e-5))

    @functools.cache
    def folded_values() -> tuple[Any, Any]:
        data, required = inputs.data, inputs.required
        affine = "scale" if scale is not None else "bn"  # Caffe: BatchNorm without affine, then Scale
        return fold(
            required("layer.weight"),
            data("layer.bias"),
            required("bn.running_mean"),
            required("bn.running_var"),
            eps,
            data(f"{affine}.weight"),
            data(f"{affine}.bias"),
        )

    folded = [bn] + ([scale] if scale is not None else [])
    origin = Origin("derived", f"{layer.name} folded with {' + '.join(x.name for x in folded)}")
    weight = layer.blobs["weight"]
    weight.derive(lambda: folded_values()[0], origin)
    if "bias" in layer.blobs:
        layer.blobs["bias"].derive(lambda: folded_values()[1], origin)
    else:
        from surgery.ir import ParamBlob

        layer.blobs["bias"] = ParamBlob.lazy(
            (weight.shape[0],),
            weight.dtype_name,
            lambda: folded_values()[1],
            lr_mult=weight.lr_mult,
            decay_mult=weight.decay_mult,
            origin=origin,
        )
        layer.params["bias_term"] = True
    last = folded[-1]
    net.redirect_consumers(last.outputs[0], layer.outputs[0])
    for gone in reversed(folded):
        net.remove_layer(gone.name)
    return [Action("fold_batchnorm", layer.name, DERIVED, f"absorbed {', '.join(x.name for x in folded)}")] + [
        Action("fold_batchnorm", x.name, DROPPED, f"folded into {layer.name}") for x in folded
    ]


@register_op("fold_batchnorm")
def fold_batchnorm(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Fold each named layer's following BatchNorm (every foldable pair when none is named)."""
    explicit = bool(op.layer)
    names = (
        [n for pattern in op.layer for n in match_name(net, pattern)]
        if explicit
        else [x.name for x in net.layers() if x.type in FOLDABLE]
    )
    actions: list[Action] = []
    for name in names:
        layer = net.layer(name)
        if layer.type not in FOLDABLE:
            raise SpecError(
                f"{name!r} is a {layer.type}; fold_batchnorm folds into Convolution or InnerProduct", subject=name
            )
        chain = _chain(net, layer)
        if isinstance(chain, str):
            if explicit:
                raise SpecError(
                    f"cannot fold a BatchNorm into {name!r}: {chain}",
                    subject=name,
                    fix="the BatchNorm's input must have no other consumers",
                )
            continue
        actions += _fold_one(net, layer, *chain)
    if not actions:
        raise SpecError("fold_batchnorm found no Convolution/InnerProduct followed by a BatchNorm")
    net.shapes()
    return actions
