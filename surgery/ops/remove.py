"""``remove``: bypass one-in-one-out layers, or delete whole branches (aux heads)."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ops.base import DROPPED, Action, OpContext, register_op
from surgery.ops.selectors import match_name


def _bypass(net: Net, name: str) -> Action:
    layer = net.layer(name)
    if layer.type == "Input" or len(layer.inputs) != 1 or len(layer.outputs) != 1:
        raise SpecError(
            f"{name!r} ({layer.type}) has {len(layer.inputs)} input(s) and {len(layer.outputs)} output(s); "
            "only a one-in-one-out layer can be bypassed",
            fix="use `branch` to delete it with everything downstream",
            subject=name,
        )
    net.redirect_consumers(layer.outputs[0], layer.inputs[0])
    net.remove_layer(name)
    return Action("remove", name, DROPPED, f"bypassed: its consumers read {layer.inputs[0]!r}")


@register_op("remove")
def remove(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Bypass each ``op.layer``; delete each ``op.branch`` and all its descendants."""
    if not op.layer and not op.branch:
        raise SpecError("remove names nothing", fix="add layer (bypass) or branch (delete downstream)")
    actions = []
    for pattern in op.layer:
        for name in match_name(net, pattern):
            actions.append(_bypass(net, name))
    doomed: set[str] = set()
    for pattern in op.branch:
        for name in match_name(net, pattern):
            doomed |= net.descendants(name) | {name}
    if doomed:
        if any(net.layer(n).type == "Input" for n in doomed):
            raise SpecError("that branch includes the net's input", subject=op.branch[0])
        survivors = [b for b in net.outputs if net.producer(b).name not in doomed]
        if not survivors:
            raise SpecError("removing that branch leaves the net without outputs", subject=op.branch[0])
        order = [n for n in net.layer_names() if n in doomed]
        net.set_outputs(survivors)
        net.prune_to(set(net.layer_names()) - doomed)
        actions += [Action("remove", n, DROPPED, "in a removed branch") for n in order]
    net.shapes()
    return actions
