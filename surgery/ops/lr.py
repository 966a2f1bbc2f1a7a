"""``lr``: set lr_mult / decay_mult on the selected layers (lr_mult 0 = frozen)."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ir.blob import check_multiplier
from surgery.layers import layer_type
from surgery.ops.base import LR, Action, OpContext, register_op
from surgery.ops.selectors import place, select


def _selection(net: Net, op: Any) -> list[str]:
    if not (op.layer or op.match or op.regex or op.HasField("up_to")):
        raise SpecError("lr selects no layers", fix="add layer, match, regex or up_to")
    if not (op.HasField("lr_mult") or op.HasField("decay_mult")):
        raise SpecError("lr sets nothing", fix="set lr_mult, decay_mult or both")
    for field in ("lr_mult", "decay_mult"):
        if op.HasField(field):
            check_multiplier(getattr(op, field), field)
    return select(
        net, names=op.layer, globs=op.match, regexes=op.regex, up_to_layer=op.up_to if op.HasField("up_to") else None
    )


@register_op("lr")
def lr(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Set the multipliers of every trainable blob of every selected layer.

    A BatchNorm whose lr_mult becomes 0 also freezes its running statistics
    (Caffe's ``use_global_stats``), so a frozen trunk really stays fixed.
    """
    names = _selection(net, op)
    actions = []
    touched = 0
    for name in names:
        layer = net.layer(name)
        roles = [r for r in layer_type(layer.type).trainable_roles(layer) if r in layer.blobs]
        if op.HasField("blob"):
            roles = [r for r in roles if r == op.blob]
        if not roles:
            continue
        for role in roles:
            blob = layer.blobs[role]
            if op.HasField("lr_mult"):
                blob.lr_mult = op.lr_mult
            if op.HasField("decay_mult"):
                blob.decay_mult = op.decay_mult
        touched += 1
        detail = ", ".join(f"{f} {getattr(op, f):g}" for f in ("lr_mult", "decay_mult") if op.HasField(f))
        if op.HasField("blob"):
            detail += f" (blob {op.blob})"
        if op.HasField("up_to") and op.up_to not in net:  # a module path: say which layer it meant
            detail += f"; up_to {place(net, op.up_to)}"
        if layer.type == "BatchNorm" and op.HasField("lr_mult") and op.lr_mult == 0:
            layer.params["use_global_stats"] = True
            detail += "; running statistics frozen"
        actions.append(Action("lr", name, LR, detail))
    if not touched:
        what = f"a {op.blob!r} blob" if op.HasField("blob") else "parameters"
        raise SpecError(
            f"lr selects {len(names)} layer(s), none of which has {what}",
            fix="select layers with weights (Convolution, InnerProduct, BatchNorm...)",
            subject=(list(op.layer) + list(op.match) + list(op.regex) + [op.up_to])[0],
        )
    net.invalidate()
    return actions
