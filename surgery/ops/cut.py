"""``cut``: keep the net up to and including a layer, dropping everything else."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ops.base import DROPPED, Action, OpContext, register_op


@register_op("cut")
def cut(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Keep ``op.at`` and its ancestors; ``op.at``'s outputs become the net's outputs."""
    if not op.at:
        raise SpecError("cut needs `at`: the last layer to keep", fix='add at: "block2_pool"')
    last = net.layer(op.at)
    if last.type == "Input":
        raise SpecError(f"cutting at the input {op.at!r} would keep no layer", subject=op.at)
    keep = net.ancestors(op.at) | {op.at}
    dropped = net.prune_to(keep)
    net.set_outputs(last.outputs)
    last.phase = None  # its output is now the net's output in every phase
    for name in keep:
        net.layer(name).phase = None
    return [Action("cut", name, DROPPED, f"after the cut at {op.at!r}") for name in dropped]
