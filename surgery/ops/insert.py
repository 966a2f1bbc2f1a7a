"""``insert``: new layers (Caffe syntax) between a layer and its consumers."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ops.base import ADDED, Action, OpContext, register_op
from surgery.ops.newlayer import add_caffe_layers
from surgery.ops.selectors import place


@register_op("insert")
def insert(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """The first new layer reads ``op.after``'s output; that output's consumers (or only
    ``op.before``) read the last new layer's output instead."""
    if not op.after or not op.layer:
        raise SpecError("insert needs `after` and at least one `layer { }`", fix='add after: "conv1" and a layer')
    after = place(net, op.after)
    if len(after.blobs) != 1:
        raise SpecError(
            f"{op.after!r} has {len(after.blobs)} outputs; insert after a one-output layer", subject=op.after
        )
    blob = after.blobs[0]
    # The readers are taken before the new layers exist: the first new layer reads `blob`
    # too, and must keep reading it.
    readers = [reader.name for reader, _ in net.consumers(blob)]
    if op.HasField("before"):
        before = net.layer(op.before)
        if blob not in before.inputs:
            raise SpecError(f"{op.before!r} does not read {op.after!r}'s output", subject=op.before)
        readers = [op.before]
    added = add_caffe_layers(net, list(op.layer), blob, ctx.seed)
    last = added[-1][0].outputs[0]
    moved = net.redirect_consumers(blob, last, only=readers)
    if blob in net.outputs and not op.HasField("before"):
        net.set_outputs([last if b == blob else b for b in net.outputs])
    where = f"between {after} and {', '.join(repr(m) for m in moved) or 'the output'}"
    return [Action("insert", layer.name, ADDED, "; ".join([f"{layer.type} {where}", *notes])) for layer, notes in added]
