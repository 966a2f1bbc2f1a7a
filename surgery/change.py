"""The change a spec makes, as the picture shows it: the source net and the edited net,
each layer marked with what happened to it and the spec line that did it.

Reads shapes and report rows only, never weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from surgery.emitters.picture.html import report_page
from surgery.emitters.picture.model import Node, Side
from surgery.emitters.picture.svg import draw_svg
from surgery.ir import Net
from surgery.report import Report, build_report


def _lr_mark(row: dict[str, Any]) -> str:
    lr = row["lr_mult"]
    if lr is None:
        return ""
    values = lr if isinstance(lr, list) else [lr]
    if all(v == 0 for v in values):
        return "frozen"
    # The first blob (the weight) speaks for the layer: Caffe's usual bias lr_mult of 2
    # beside a weight's 1 is the base rate, not a change.
    return "" if values[0] == 1 else f"lr x{values[0]:g}"


def _short_where(where: str) -> str:
    """``specs/x.prototxt:14:28`` -> ``line 14``."""
    found = re.search(r":(\d+):\d+$", where)
    return f"line {found.group(1)}" if found else where


def _node(row: dict[str, Any], change: str, detail: str, note: str, anchor: bool) -> Node:
    shape = tuple(row["output_shape"]) if row["output_shape"] else None
    return Node(
        row["name"],
        row["type"],
        change,
        shape,
        row["params"],
        _lr_mark(row),
        tuple(dict.fromkeys(_short_where(w) for w in row["where"])),
        note,
        detail,
        row["phase"],
        anchor,
    )


def _edges(net: Net) -> list[tuple[str, str]]:
    return list(dict.fromkeys((a, b) for a, b in net.graph.edges()))


def _anchors(net: Net) -> set[str]:
    """Inputs and the layers making the outputs stay visible when neighbours fold."""
    return {layer.name for layer in net.input_layers()} | {net.producer(b).name for b in net.outputs}


def change_sides(before: Net, after: Net, report: Report) -> list[Side]:
    """The two sides of the picture: ``before`` (the source as loaded) and ``after`` (the
    edited net, whose ``report`` carries each layer's change and spec positions)."""
    details: dict[str, list[str]] = {}
    renamed_to: dict[str, str] = {}
    for action in report.actions:
        details.setdefault(action.layer, []).append(f"{action.op}: {action.detail}")
        if action.was:
            renamed_to[action.was] = action.layer
    return [
        Side(f"source: {before.name}", _before_nodes(before, report, details, renamed_to), _edges(before)),
        Side(f"edited: {after.name}", _after_nodes(after, report, details, renamed_to), _edges(after)),
    ]


def _after_nodes(after: Net, report: Report, details: dict[str, list[str]], renamed_to: dict[str, str]) -> list[Node]:
    was = {new: old for old, new in renamed_to.items()}
    anchors = _anchors(after)
    return [
        _node(
            row,
            row["change"],
            "; ".join(details.get(row["name"], [])) or row["origin"],
            f"was {was[row['name']]}" if row["name"] in was else "",
            row["name"] in anchors,
        )
        for row in report.rows
    ]


def _before_nodes(before: Net, report: Report, details: dict[str, list[str]], renamed_to: dict[str, str]) -> list[Node]:
    """A source layer takes the colour of what it became (the same name, or the name an
    edit gave it), and is dropped when it became nothing."""
    after_rows = {row["name"]: row for row in report.rows}
    dropped: dict[str, list[str]] = {}
    for action in report.actions:
        if action.what == "dropped" and action.where:
            dropped.setdefault(action.layer, []).append(action.where)
    anchors = _anchors(before)
    nodes = []
    for row in build_report(before).rows:
        name = row["name"]
        successor = name if name in after_rows else renamed_to.get(name)
        if successor in after_rows:
            change = after_rows[successor]["change"]
            note = f"now {successor}" if successor != name else ""
            row = {**row, "where": after_rows[successor]["where"] if change != "kept" else []}
            detail = "; ".join(details.get(str(successor), []))
        else:
            change, note = "dropped", ""
            row = {**row, "where": dropped.get(name, [])}
            detail = "; ".join(details.get(name, [])) or "not in the edited net"
        nodes.append(_node(row, change, detail, note, name in anchors))
    return nodes


def change_svg(before: Net, after: Net, report: Report, *, show_all: bool = False, standalone: bool = True) -> str:
    """The before/after picture as SVG text (``show_all``: no folding of unchanged runs)."""
    return draw_svg(change_sides(before, after, report), min_group=0 if show_all else 3, standalone=standalone)


def spec_lines(path: Path, report: Report) -> dict[int, str]:
    """The text of each spec line the report's edits point at (for the report page)."""
    wanted = set()
    for action in report.actions:
        found = re.search(r":(\d+):\d+$", action.where)
        if found:
            wanted.add(int(found.group(1)))
    try:
        text = path.read_text().splitlines()
    except OSError:
        return {}
    return {n: text[n - 1].strip() for n in sorted(wanted) if 0 < n <= len(text)}


def verify_figures(verified: Any, seed: int = 0) -> dict[str, Any]:
    """A verify result as plain data (for report.json and the report page): per
    comparison the differences, the tolerances, and the rule that passed (``allclose``,
    ``scale``, or none)."""
    comparisons = []
    for c in verified.comparisons:
        rule = "allclose" if c.allclose_ok else "scale" if c.scale_ok else ""
        comparisons.append(
            {
                "what": c.what,
                "blob": c.blob,
                "max_abs": c.max_abs,
                "max_rel": c.max_rel,
                "allclose_ratio": c.allclose_ratio,
                "atol": c.tolerance.atol,
                "rtol": c.tolerance.rtol,
                "scale_rtol": c.tolerance.scale_rtol,
                "ok": c.ok,
                "passed_by": rule,
            }
        )
    return {
        "provider": verified.provider,
        "torch_device": verified.device,
        "onnx_tf32": verified.tf32,
        "ok": verified.ok,
        "seed": seed,
        "comparisons": comparisons,
        "precision": getattr(verified, "precision", None),
    }


#: The most boxes a side of the report page's pictures may have (about a second of drawing
#: here for both pictures); past it a picture is left out and the page says how to draw it.
MAX_PAGE_BOXES = 2000


def report_html(
    spec_path: Path,
    before: Net,
    after: Net,
    report: Report,
    verified: dict[str, Any] | None = None,
    *,
    show_all: bool = False,
) -> str:
    """The self-contained report page: picture, edits, weights, verify figures, layers."""
    sides = change_sides(before, after, report)
    folded = draw_svg(sides, min_group=0 if show_all else 3, standalone=False, max_boxes=MAX_PAGE_BOXES)
    every = draw_svg(sides, min_group=0, standalone=False, max_boxes=MAX_PAGE_BOXES) if folded is not None else None
    return report_page(
        after.name,
        str(spec_path),
        report.as_dict(),
        folded,
        None if every == folded else every,
        spec_lines(spec_path, report),
        verified,
    )
