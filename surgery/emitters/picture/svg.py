"""The before/after picture as SVG: the source net and the edited net side by side, one
box per layer (or per folded group of unchanged layers), coloured by what happened.

Built with ElementTree, so names from model files are escaped like any other text.
Styling is in presentation attributes rather than CSS, so every SVG renderer (browsers,
resvg for PNG) draws the same thing; the ``class`` attributes name each box's kind for
scripts and tests (``layer reinitialised``, ``group kept``).
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections import Counter
from typing import overload

from surgery.emitters.picture.groups import group_boxes, group_mark
from surgery.emitters.picture.layout import place
from surgery.emitters.picture.model import CHANGE_STYLES, Box, Side, xml_safe
from surgery.interrupts import checkpoint

FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
NAME_SIZE, TEXT_SIZE, TITLE_SIZE = 12.5, 11, 15
LINE = 15  # line height inside a box
PAD_X, PAD_Y = 10, 7
STRIPE = 6  # the frozen / lr stripe on a box's left edge
MAX_CHARS = 44  # longer names are shortened (the tooltip has them whole)
PANEL_GAP = 70
MARGIN = 16
FROZEN_COLOUR, LR_COLOUR, EDGE_COLOUR = "#4f6d8a", "#00897b", "#7a7a7a"


def _width(text: str, size: float, bold: bool = False) -> float:
    """A text's width in DejaVu Sans, near enough: 0.6 em a character (0.66 bold)."""
    return len(text) * size * (0.66 if bold else 0.6)


def _short(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit - limit // 2) :]


def _shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "?"


def _params(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.1f}M params"
    if count >= 10_000:
        return f"{count / 1e3:.0f}k params"
    return f"{count:,} params" if count else "no params"


def _lines(box: Box) -> list[tuple[str, str]]:
    """The box's text lines as ``(text, role)``; role picks the font."""
    node = box.first
    if box.grouped:
        last = box.members[-1]
        types = Counter(m.type for m in box.members).most_common()
        kinds = ", ".join(f"{n} {t}" for t, n in types[:3]) + (", …" if len(types) > 3 else "")
        lines = [
            (f"{len(box.members)} layers kept", "name"),
            (f"{_short(node.name, 22)} … {_short(last.name, 22)}", "meta"),
            (_short(kinds, 52), "meta"),
            (f"out {_shape(last.shape)} · {_params(sum(m.params for m in box.members))}", "meta"),
        ]
    else:
        lines = [(_short(node.name), "name"), (f"{node.type} · {_shape(node.shape)} · {_params(node.params)}", "meta")]
        if node.change != "kept" or node.where:
            spec = ", ".join(node.where[:3]) + (" …" if len(node.where) > 3 else "")
            lines.append((node.change + (f" · spec {spec}" if spec else ""), "change"))
        if node.note:
            lines.append((_short(node.note, 52), "meta"))
    marks = [m for m in (group_mark(box), "train only" if node.phase == "train" else "") if m]
    if marks:
        lines.append((" · ".join(marks), "lr"))
    return lines


def _size(lines: list[tuple[str, str]]) -> tuple[float, float]:
    widest = max(_width(t, NAME_SIZE if r == "name" else TEXT_SIZE, r == "name") for t, r in lines)
    return widest + 2 * PAD_X + STRIPE, len(lines) * LINE + 2 * PAD_Y


def _tooltip(box: Box) -> str:
    if box.grouped:
        return f"{len(box.members)} unchanged layers:\n" + "\n".join(f"{m.name} ({m.type})" for m in box.members)
    node = box.first
    parts = [
        f"{node.name} ({node.type})",
        f"output {_shape(node.shape)}, {node.params:,} parameters",
        f"{node.change}" + (f": {node.detail}" if node.detail else ""),
    ]
    if node.where:
        parts.append("spec: " + ", ".join(node.where))
    return "\n".join(parts)


def _draw_box(
    parent: ET.Element, box: Box, centre: tuple[float, float], size: tuple[float, float], lines: list[tuple[str, str]]
) -> None:
    node = box.first
    fill, stroke, _ = CHANGE_STYLES.get(node.change, CHANGE_STYLES["derived"])
    kind = "group" if box.grouped else "layer"
    attrs = {"class": f"{kind} {node.change}"}
    if box.grouped:
        attrs["data-layers"] = "\n".join(m.name for m in box.members)
    else:
        attrs["data-layer"] = node.name
    g = ET.SubElement(parent, "g", attrs)
    ET.SubElement(g, "title").text = _tooltip(box)
    w, h = size
    x, y = centre[0] - w / 2, centre[1] - h / 2
    rect = {
        "x": f"{x:.1f}",
        "y": f"{y:.1f}",
        "width": f"{w:.1f}",
        "height": f"{h:.1f}",
        "rx": "5",
        "fill": fill,
        "stroke": stroke,
        "stroke-width": "1.6" if node.change != "kept" else "1",
    }
    if box.grouped:  # a stack of cards: a second outline peeking out behind
        ET.SubElement(g, "rect", {**rect, "x": f"{x + 4:.1f}", "y": f"{y + 4:.1f}", "fill": "#e8e8e8"})
    if node.change == "dropped":
        rect["stroke-dasharray"] = "5 3"
    ET.SubElement(g, "rect", rect)
    lr = group_mark(box)
    if lr:
        colour = FROZEN_COLOUR if lr == "frozen" else LR_COLOUR
        ET.SubElement(
            g,
            "rect",
            {
                "x": f"{x + 1:.1f}",
                "y": f"{y + 1:.1f}",
                "width": str(STRIPE),
                "height": f"{h - 2:.1f}",
                "rx": "3",
                "fill": colour,
            },
        )
    for index, (text, role) in enumerate(lines):
        attrs = {
            "x": f"{x + PAD_X + STRIPE:.1f}",
            "y": f"{y + PAD_Y + LINE * index + 11.5:.1f}",
            "font-size": str(NAME_SIZE if role == "name" else TEXT_SIZE),
            "fill": "#222",
        }
        if role == "name":
            attrs["font-weight"] = "bold"
        elif role == "change":
            attrs["fill"] = stroke
        elif role == "lr":
            attrs["fill"] = FROZEN_COLOUR if lr == "frozen" else LR_COLOUR
            attrs["font-weight"] = "bold"
        ET.SubElement(g, "text", attrs).text = text


def _edge_path(points: list[tuple[float, float]], start: tuple[float, float], end: tuple[float, float]) -> str:
    """A smooth curve from ``start`` through the layout's bend points to ``end``, leaving
    and entering each point vertically (the look of dot's splines)."""
    pts = [start, *points[1:-1], end]
    path = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        mid = (y0 + y1) / 2
        path.append(f"C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}")
    return " ".join(path)


def _panel(
    parent: ET.Element, side: Side, left: float, top: float, boxes: list[Box], edges: list[tuple[str, str]]
) -> tuple[float, float]:
    """Draw one side's boxes at (left, top); returns its (width, height)."""
    lines = {box.key: _lines(box) for box in boxes}
    sizes = {box.key: _size(lines[box.key]) for box in boxes}
    placed = place(sizes, edges)
    changed = sum(1 for n in side.nodes if n.change != "kept")
    title = f"{side.title} · {len(side.nodes)} layers" + (f" · {changed} changed" if changed else "")
    width = max(placed.width, _width(title, TITLE_SIZE, True))
    panel = ET.SubElement(parent, "g", {"class": "panel", "data-title": side.title})
    ET.SubElement(
        panel,
        "text",
        {
            "x": f"{left:.1f}",
            "y": f"{top + TITLE_SIZE:.1f}",
            "font-size": str(TITLE_SIZE),
            "font-weight": "bold",
            "fill": "#222",
        },
    ).text = title
    top += TITLE_SIZE + 14
    offset = left + (width - placed.width) / 2
    for (a, b), route in placed.routes.items():
        (ax, ay), (bx, by) = placed.centres[a], placed.centres[b]
        start = (ax + offset, ay + top + sizes[a][1] / 2)
        end = (bx + offset, by + top - sizes[b][1] / 2 - 2)
        bends = [(x + offset, y + top) for x, y in route]
        ET.SubElement(
            panel,
            "path",
            {
                "d": _edge_path(bends, start, end),
                "fill": "none",
                "stroke": EDGE_COLOUR,
                "stroke-width": "1.2",
                "marker-end": "url(#arrow)",
                "class": "edge",
            },
        )
    checkpoint()
    for box in boxes:
        cx, cy = placed.centres[box.key]
        _draw_box(panel, box, (cx + offset, cy + top), sizes[box.key], lines[box.key])
    return width, placed.height + TITLE_SIZE + 14


def _legend(parent: ET.Element, sides: list[Side], left: float, top: float) -> float:
    """Swatches for the kinds of change the picture shows; returns the legend's height."""
    seen = {n.change for side in sides for n in side.nodes}
    items = [(CHANGE_STYLES[c][0], CHANGE_STYLES[c][1], CHANGE_STYLES[c][2]) for c in CHANGE_STYLES if c in seen]
    if any(n.lr == "frozen" for side in sides for n in side.nodes):
        items.append((FROZEN_COLOUR, FROZEN_COLOUR, "frozen (lr_mult 0)"))
    if any(n.lr and n.lr != "frozen" for side in sides for n in side.nodes):
        items.append((LR_COLOUR, LR_COLOUR, "lr_mult ≠ 1"))
    legend = ET.SubElement(parent, "g", {"class": "legend"})
    x = left
    for fill, stroke, text in items:
        ET.SubElement(
            legend,
            "rect",
            {
                "x": f"{x:.1f}",
                "y": f"{top:.1f}",
                "width": "14",
                "height": "14",
                "rx": "3",
                "fill": fill,
                "stroke": stroke,
            },
        )
        ET.SubElement(
            legend,
            "text",
            {"x": f"{x + 19:.1f}", "y": f"{top + 11.5:.1f}", "font-size": str(TEXT_SIZE), "fill": "#222"},
        ).text = text
        x += 19 + _width(text, TEXT_SIZE) + 18
    return 14


@overload
def draw_svg(sides: list[Side], *, min_group: int = 3, standalone: bool = True, max_boxes: None = None) -> str: ...


@overload
def draw_svg(sides: list[Side], *, min_group: int = 3, standalone: bool = True, max_boxes: int) -> str | None: ...


def draw_svg(
    sides: list[Side], *, min_group: int = 3, standalone: bool = True, max_boxes: int | None = None
) -> str | None:
    """The picture of ``sides`` (source first, then the edited net) as SVG text.

    Args:
        sides: what to draw, left to right.
        min_group: fold runs of at least this many unchanged layers into one box
            (0: draw every layer).
        standalone: a file of its own (XML declaration, namespace) rather than markup
            to inline in an HTML page.
        max_boxes: return ``None`` instead when a side has more boxes than this (the
            report page of a 100,000-layer file must not take minutes to draw).
    """
    root = ET.Element("svg", {"font-family": FONT, "class": "surgery-change"})
    defs = ET.SubElement(root, "defs")
    marker = ET.SubElement(
        defs,
        "marker",
        {
            "id": "arrow",
            "viewBox": "0 0 10 10",
            "refX": "9",
            "refY": "5",
            "markerWidth": "7",
            "markerHeight": "7",
            "orient": "auto-start-reverse",
        },
    )
    ET.SubElement(marker, "path", {"d": "M0,0 L10,5 L0,10 z", "fill": EDGE_COLOUR})
    background = ET.SubElement(root, "rect", {"x": "0", "y": "0", "fill": "#ffffff"})
    top = MARGIN + _legend(root, sides, MARGIN, MARGIN) + 22
    # The last side (the edited net) folds first; the others fold along its groups.
    grouped = {len(sides) - 1: group_boxes(sides[-1], min_group)}
    partition = {m.name: box.key for box in grouped[len(sides) - 1][0] for m in box.members}
    for index, side in enumerate(sides[:-1]):
        grouped[index] = group_boxes(side, min_group, partition)
    if max_boxes is not None and any(len(boxes) > max_boxes for boxes, _ in grouped.values()):
        return None
    left: float = MARGIN
    height = 0.0
    for index, side in enumerate(sides):
        if index:
            ET.SubElement(
                root,
                "line",
                {
                    "x1": f"{left - PANEL_GAP / 2:.1f}",
                    "y1": f"{top:.1f}",
                    "x2": f"{left - PANEL_GAP / 2:.1f}",
                    "y2": "0",
                    "stroke": "#d0d0d0",
                    "class": "divider",
                },
            )
        boxes, edges = grouped[index]
        w, h = _panel(root, side, left, top, boxes, edges)
        left += w + PANEL_GAP
        height = max(height, h)
    width, total = left - PANEL_GAP + MARGIN, top + height + MARGIN
    for divider in root.iter("line"):
        divider.set("y2", f"{total - MARGIN:.1f}")
    background.set("width", f"{width:.0f}")
    background.set("height", f"{total:.0f}")
    root.set("width", f"{width:.0f}")
    root.set("height", f"{total:.0f}")
    root.set("viewBox", f"0 0 {width:.0f} {total:.0f}")
    if standalone:
        root.set("xmlns", "http://www.w3.org/2000/svg")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_safe(ET.tostring(root, encoding="unicode")) + "\n"
    return xml_safe(ET.tostring(root, encoding="unicode"))
