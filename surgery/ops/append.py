"""``append``: stack new layers (Caffe syntax) on top of the net's output."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ops.base import ADDED, Action, OpContext, register_op
from surgery.ops.newlayer import add_caffe_layers


@register_op("append")
def append(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Add ``op.layer`` as a chain after the net's output. The outputs the new layers
    read stop being outputs, unless only train-only layers read them (a projection head
    for contrastive training beside the embedding it reads); the new layers' unread tops
    become outputs."""
    if not op.layer:
        raise SpecError("append needs at least one `layer { }`")
    outputs = net.outputs
    if len(outputs) != 1 and not op.layer[0].bottom:
        raise SpecError(
            f"the net has {len(outputs)} outputs ({', '.join(outputs)}); "
            "the first appended layer must say which it reads",
            fix=f'add bottom: "{outputs[0]}" to layer {op.layer[0].name!r}' if outputs else "add a bottom",
            subject=op.layer[0].name,
        )
    added = add_caffe_layers(net, list(op.layer), outputs[0] if outputs else "", ctx.seed)
    read = {blob for layer, _ in added for blob in layer.inputs}
    read_for_deploy = {blob for layer, _ in added if layer.phase != "train" for blob in layer.inputs}
    written = [(blob, layer.phase) for layer, _ in added for blob in layer.outputs]
    new_outputs = [b for b in outputs if b not in read_for_deploy] + [
        b for b, phase in written if b not in (read if phase == "train" else read_for_deploy)
    ]
    net.set_outputs(new_outputs)
    return [Action("append", layer.name, ADDED, "; ".join([layer.type, *notes])) for layer, notes in added]
