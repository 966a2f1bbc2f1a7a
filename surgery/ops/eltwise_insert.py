"""``eltwise``: insert an elementwise PROD / SUM / MAX of two blobs, with numpy
broadcasting (a 1x1xHxW gate times a 1xCxHxW feature map). New layers (Caffe syntax) may
compute the second input, e.g. a 1x1 convolution making a one-channel gate. Everything
downstream reads the result and keeps its pretrained weights."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from surgery.errors import ShapeError, SpecError
from surgery.ir import Layer, Net, Origin
from surgery.lazy_torch import torch
from surgery.ops.base import ADDED, Action, OpContext, register_op
from surgery.ops.newlayer import add_caffe_layers, resolve_bottom

_OPERATIONS = {0: "PROD", 1: "SUM", 2: "MAX"}
_IDENTITY_GATE = 1 - 1e-3  # sigmoid(bias) for a gate that starts almost open


def _near_identity(net: Net, added: list[Layer], gate_blob: str) -> tuple[Layer, str]:
    """Zero the last new layer's weight, set its bias so sigmoid(bias) = 1 - 1e-3, and
    append a Sigmoid: the product starts within 0.1% of the original activations."""
    last = added[-1]
    if "weight" not in last.blobs or "bias" not in last.blobs:
        raise SpecError("near_identity needs the gate's last new layer to have a weight and a bias", subject=last.name)
    bias = math.log(_IDENTITY_GATE / (1 - _IDENTITY_GATE))
    origin = Origin("filler", f"near-identity gate: sigmoid(bias) = {_IDENTITY_GATE}")
    # A small random weight (not zero) lets the gate learn; its effect starts tiny.
    weight, filled = last.blobs["weight"], last.blobs["weight"].snapshot()
    weight.derive(lambda: filled.data * 1e-3, Origin("filler", f"{weight.origin.detail} x 1e-3"))
    gate = last.blobs["bias"]
    gate.derive(lambda: torch.full(gate.shape, bias, dtype=gate.dtype), origin)
    sigmoid = Layer(
        f"{last.name}/sigmoid",
        "Sigmoid",
        inputs=[gate_blob],
        outputs=[f"{last.name}/sigmoid"],
        per_frame=last.per_frame,
    )
    net.add_layer(sigmoid)
    return sigmoid, sigmoid.outputs[0]


def _downstream_first(net: Net, main: str, other: str, readers: list[str]) -> tuple[str, str, list[str], str]:
    """The result replaces the blob computed *later*: when ``other`` is computed from
    ``main`` (a skip connection written in either order), feeding ``main``'s readers the
    result would make a cycle, so ``other``'s readers read it instead. PROD, SUM and MAX
    do not depend on their inputs' order."""
    first, second = net.producer(main).name, net.producer(other).name
    if first == second or first not in net.ancestors(second):
        return main, other, readers, ""
    later = [reader.name for reader, _ in net.consumers(other)]
    return (
        other,
        main,
        later,
        (
            f"{other!r} is computed from {main!r}, so the result replaces {other!r} "
            f"(its readers {', '.join(later) or 'the output'} read it)"
        ),
    )


@register_op("eltwise")
def eltwise(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Insert ``op.name`` = bottom[0] (op) bottom[1]; bottom[0]'s readers read it instead."""
    if not op.name:
        raise SpecError("eltwise needs a name for the new layer", fix='add name: "gate"')
    operation = _OPERATIONS[op.operation]
    if op.near_identity and operation != "PROD":
        raise SpecError("near_identity only makes sense for a PROD gate", subject=op.name)
    main = resolve_bottom(net, op.bottom[0]) if op.bottom else None
    if main is None:
        raise SpecError("eltwise needs bottom: the blob to gate (and the second input)", subject=op.name)
    # Taken before any new layer exists: the gate's own layers read `main` and must keep it.
    readers = [reader.name for reader, _ in net.consumers(main)]
    actions = []
    added: list[Layer] = []
    if op.layer:
        for message in op.layer:
            if message.type in ("InnerProduct", "Convolution") and operation == "PROD" and not op.allow_zero:
                param = message.convolution_param if message.type == "Convolution" else message.inner_product_param
                if (
                    param.HasField("weight_filler")
                    and param.weight_filler.type in ("", "constant")
                    and param.weight_filler.value == 0
                ):
                    raise SpecError(
                        f"layer {message.name!r} feeds a PROD with an all-zero filler: the product "
                        "would zero everything downstream",
                        subject=message.name,
                        fix="use a random filler (msra, xavier), near_identity, or allow_zero: true",
                    )
        added = [layer for layer, _ in add_caffe_layers(net, list(op.layer), main, ctx.seed, op.allow_zero)]
        actions += [Action("eltwise", x.name, ADDED, f"{x.type} feeding {op.name}") for x in added]
        other = added[-1].outputs[0]
    elif len(op.bottom) == 2:
        other = resolve_bottom(net, op.bottom[1])
        main, other, readers, note = _downstream_first(net, main, other, readers)
        if note:
            actions.append(Action("eltwise", op.name, ADDED, note))
    else:
        raise SpecError("eltwise needs a second bottom or new layers that make it", subject=op.name)
    if op.near_identity and not added:
        raise SpecError(
            "near_identity shapes a gate the eltwise's new layers make; this one has none",
            subject=op.name,
            fix="add the gate's layer { } (e.g. a 1x1 convolution), or drop near_identity",
        )
    if op.near_identity:
        sigmoid, other = _near_identity(net, added, other)
        actions.append(Action("eltwise", sigmoid.name, ADDED, "Sigmoid: the gate starts near 1"))
    shapes = net.shapes()
    try:
        np.broadcast_shapes(tuple(net.known_shape(main)), tuple(net.known_shape(other)))
    except ValueError:
        raise ShapeError(
            f"{main!r} {shapes[main]} and {other!r} {shapes[other]} do not broadcast",
            subject=op.name,
            fix="make the gate 1 where the shapes differ (e.g. num_output: 1)",
        ) from None
    layer = Layer(
        op.name,
        "Eltwise",
        inputs=[main, other],
        outputs=[op.name],
        params={"operation": operation, "coeff": []},
        per_frame=net.producer(main).per_frame and net.producer(other).per_frame,
    )
    net.add_layer(layer)
    net.redirect_consumers(main, op.name, only=readers)
    if main in net.outputs:
        net.set_outputs([op.name if b == main else b for b in net.outputs])
    net.shapes()
    return [
        *actions,
        Action(
            "eltwise",
            op.name,
            ADDED,
            f"{operation} of {main!r} {shapes[main]} and {other!r} "
            f"{shapes[other]}; {', '.join(readers) or 'the output'} "
            "now read it",
        ),
    ]
