"""Folding unchanged layers into one box, so that a 200-layer net whose edits touch three
layers draws as a handful of boxes.

A group is a set of layers that all look alike (kept, same learning-rate marker, same
phase) and that the rest of the net reaches as one thing: every layer in it except the
last one feeds only layers inside it. Such a set is convex (no path leaves it and comes
back), so the boxes still form a DAG. Groups grow backwards from their last layer,
taking the latest layers first, so a branch that leads somewhere else (an auxiliary head,
a skip connection into an edited layer) ends a group and shows where it starts.
"""

from __future__ import annotations

from surgery.emitters.picture.model import Box, Node, Side


def _look(node: Node) -> tuple | None:
    """Layers with the same look may share a box; ``None``: never grouped."""
    if node.change != "kept" or node.anchor:
        return None
    return (node.phase,)


def _mark(node: Node) -> str | None:
    """The learning-rate marker a layer brings to its group; ``None`` for a layer without
    parameters, which fits in a frozen group as well as in a training one."""
    return node.lr if node.params else None


def group_mark(box: Box) -> str:
    """The learning-rate marker of a box (one marker for the whole of a group)."""
    return next((m for m in map(_mark, box.members) if m is not None), "")


def group_boxes(
    side: Side,
    min_group: int = 3,
    partition: dict[str, str] | None = None,
) -> tuple[list[Box], list[tuple[str, str]]]:
    """The boxes of ``side`` (in execution order of their first layer) and the edges
    between boxes. ``min_group``: smaller runs stay as single layers (0: no grouping).
    ``partition``: layers with different labels never share a box (the source side
    folds as the edited side did, so an insertion point shows on both)."""
    label = partition or {}
    order = {node.name: i for i, node in enumerate(side.nodes)}
    nodes = {node.name: node for node in side.nodes}
    preds: dict[str, list[str]] = {name: [] for name in nodes}
    succs: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in side.edges:
        succs[a].append(b)
        preds[b].append(a)
    owner: dict[str, str] = {}
    if min_group:
        for node in reversed(side.nodes):
            if node.name in owner or _look(node) is None:
                continue
            region = _region(node.name, nodes, preds, succs, owner, label)
            if len(region) >= min_group:
                for name in region:
                    owner[name] = node.name
    boxes: dict[str, Box] = {}
    for node in side.nodes:
        key = owner.get(node.name, node.name)
        boxes.setdefault(key, Box(key, [])).members.append(node)
    box_of = {name: owner.get(name, name) for name in nodes}
    edges: dict[tuple[str, str], None] = {}  # a dict: ordered, and a lookup in constant time
    for a, b in side.edges:
        pair = (box_of[a], box_of[b])
        if pair[0] != pair[1]:
            edges.setdefault(pair)
    ordered = sorted(boxes.values(), key=lambda box: order[box.members[0].name])
    return ordered, list(edges)


def _region(
    exit_name: str,
    nodes: dict[str, Node],
    preds: dict[str, list[str]],
    succs: dict[str, list[str]],
    owner: dict[str, str],
    label: dict[str, str],
) -> set[str]:
    """The largest set ending at ``exit_name`` whose other members feed only the set."""
    look = (_look(nodes[exit_name]), label.get(exit_name))
    mark = _mark(nodes[exit_name])
    region = {exit_name}
    stack = [exit_name]
    while stack:
        current = stack.pop()
        for producer in preds[current]:
            node = nodes[producer]
            if producer in region or producer in owner or (_look(node), label.get(producer)) != look:
                continue
            if _mark(node) is not None and mark is not None and _mark(node) != mark:
                continue
            # Checked again when its last consumer joins, since that one pushes it too.
            if all(consumer in region for consumer in succs[producer]):
                region.add(producer)
                stack.append(producer)
                mark = mark if mark is not None else _mark(node)
    return region
