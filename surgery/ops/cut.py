"""``cut``: keep the net up to and including a layer, dropping everything else."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ops.base import DROPPED, Action, OpContext, register_op
from surgery.ops.selectors import place


@register_op("cut")
def cut(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Keep ``op.at`` (a layer, or a module path standing for its output) and its
    ancestors; what ``op.at`` names becomes the net's outputs."""
    if not op.at:
        raise SpecError("cut needs `at`: the last layer to keep", fix='add at: "block2_pool"')
    at = place(net, op.at)
    last = net.layer(at.layer)
    if last.type == "Input":
        raise SpecError(f"cutting at the input {op.at!r} would keep no layer", subject=op.at)
    keep = net.ancestors(at.layer) | {at.layer}
    dropped = net.prune_to(keep)
    net.set_outputs(at.blobs)
    for name in keep:  # its output is now the net's output in every phase
        net.layer(name).phase = None
    return [Action("cut", name, DROPPED, f"after the cut at {at}") for name in dropped]
