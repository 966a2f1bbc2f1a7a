"""What a picture shows, as plain data: the nodes and edges of one side (source or edited
net) with what happened to each layer. The report builds these; the drawing code knows
nothing of operations, specs or the IR."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Characters XML 1.0 cannot carry at all (escaping does not help): control characters
# and lone surrogates. A name from a model file may hold them.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """``text`` with characters that XML cannot represent replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


#: Colours by what happened to a layer: (fill, stroke, legend text).
CHANGE_STYLES: dict[str, tuple[str, str, str]] = {
    "kept": ("#f5f5f5", "#8c8c8c", "kept (weights bit for bit)"),
    "reinitialised": ("#ffe0b2", "#e65100", "re-initialised (filler)"),
    "derived": ("#e6dcf7", "#5e35b1", "derived (folded, collapsed, sliced, redefined)"),
    "added": ("#d5efd5", "#2e7d32", "added"),
    "renamed": ("#d8e7fb", "#1565c0", "renamed"),
    "dropped": ("#fbd9d9", "#c62828", "dropped"),
}


@dataclass
class Node:
    """One layer as drawn.

    Attributes:
        name: the layer's name.
        type: its layer type.
        change: a key of :data:`CHANGE_STYLES`.
        shape: its (first) output shape, when known.
        params: number of trainable parameter elements.
        lr: ``""`` (trains at the base rate), ``"frozen"``, or ``"lr x10"``-style text.
        where: short spec positions of the edits that touched it (``"line 14"``).
        note: one short line of what changed (``"was loss1/classifier"``).
        detail: the full story, shown as a tooltip.
        phase: ``"train"`` for train-only layers.
        anchor: never folded into a group (inputs, outputs).
    """

    name: str
    type: str
    change: str = "kept"
    shape: tuple[int, ...] | None = None
    params: int = 0
    lr: str = ""
    where: tuple[str, ...] = ()
    note: str = ""
    detail: str = ""
    phase: str | None = None
    anchor: bool = False


@dataclass
class Side:
    """One net to draw: nodes in execution order and ``(producer, consumer)`` edges."""

    title: str
    nodes: list[Node]
    edges: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Box:
    """One drawn box: a layer, or a group of unchanged layers folded together."""

    key: str
    members: list[Node]

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1

    @property
    def first(self) -> Node:
        return self.members[0]
