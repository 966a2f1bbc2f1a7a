"""``replace``: a layer gets a new definition (Caffe syntax), keeping its weights where
their shapes still fit, and saying which it kept."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.importers.caffe_layer import layer_from_caffe
from surgery.ir import Net
from surgery.layers import layer_type
from surgery.layers.new_blobs import init_new_blobs
from surgery.ops.base import KEPT, REINITIALISED, Action, OpContext, register_op
from surgery.ops.propagate import propagate_resize


@register_op("replace")
def replace(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Swap ``op.layer``'s type and parameters for ``op.by``; same inputs and outputs."""
    if not op.layer or not op.HasField("by"):
        raise SpecError("replace needs layer and by { ... }", fix='replace { layer: "fc7" by { type: ... } }')
    old = net.layer(op.layer)
    message = op.by
    if not message.name:
        message.name = old.name
    parsed = layer_from_caffe(message)
    new = parsed.layer
    was = op.layer if new.name != op.layer else ""
    if new.name != old.name:
        net.rename_layer(old.name, new.name)
    old_outputs = net.shapes()[old.outputs[0]]  # the net still fits as a whole here
    kept_blobs = dict(old.blobs)
    old.type, old.params, old.blobs = new.type, new.params, {}
    init_new_blobs(net, old, ctx.seed, parsed.fillers, parsed.param_specs)
    kept, fresh = [], []
    for role, blob in old.blobs.items():
        previous = kept_blobs.get(role)
        if previous is not None and previous.shape == blob.shape:
            old.blobs[role] = previous
            kept.append(role)
        else:
            fresh.append(role)
    actions = [
        Action(
            "replace",
            old.name,
            KEPT if not fresh else REINITIALISED,
            f"now {old.type}; kept {', '.join(kept) or 'no weights'}"
            + (f"; new {', '.join(fresh)} from fillers" if fresh else ""),
            was=was,
        )
    ]
    # Only this layer's ancestors are sure to fit until propagation has fixed its consumers.
    new_outputs = layer_type(old.type).infer_shapes(old, net.input_shapes(old.name))[0]
    if new_outputs != old_outputs:
        actions += propagate_resize(net, old, op.propagate, ctx)
    net.shapes()
    return actions
