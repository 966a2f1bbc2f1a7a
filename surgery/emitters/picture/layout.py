"""Placing boxes: grandalf's Sugiyama (layered) layout, the algorithm Graphviz's ``dot``
uses, in pure Python. Inputs on top, data flowing down; long edges get bend points so
they run between boxes rather than through them."""

from __future__ import annotations

from dataclasses import dataclass, field

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

X_SPACE = 28  # between boxes of one rank
Y_SPACE = 34  # between ranks
COMPONENT_GAP = 40


@dataclass
class _View:
    """What grandalf reads (w, h) and writes (xy: the centre) for a vertex."""

    w: float
    h: float
    xy: tuple[float, float] = (0.0, 0.0)


@dataclass
class _EdgeView:
    points: list[tuple[float, float]] = field(default_factory=list)

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = [(float(p[0]), float(p[1])) for p in points]


@dataclass
class Placed:
    """Where everything went: box centres, edge polylines (centre to centre, with the
    bend points between), and the drawing's size."""

    centres: dict[str, tuple[float, float]]
    routes: dict[tuple[str, str], list[tuple[float, float]]]
    width: float
    height: float


def place(sizes: dict[str, tuple[float, float]], edges: list[tuple[str, str]]) -> Placed:
    """Lay out boxes of the given ``(width, height)`` (keyed by name, in a stable order)
    joined by ``edges``; coordinates start at (0, 0) top left."""
    vertices = {key: Vertex(key) for key in sizes}
    for key, vertex in vertices.items():
        vertex.view = _View(*sizes[key])
    links = []
    for a, b in edges:
        link = Edge(vertices[a], vertices[b])
        link.view = _EdgeView()
        links.append(link)
    graph = Graph(list(vertices.values()), links)
    centres: dict[str, tuple[float, float]] = {}
    routes: dict[tuple[str, str], list[tuple[float, float]]] = {}
    left = 0.0
    height = 0.0
    for component in graph.C:
        layout = SugiyamaLayout(component)
        layout.xspace, layout.yspace = X_SPACE, Y_SPACE
        roots = [v for v in component.sV if not v.e_in()]
        layout.init_all(roots=roots, inverted_edges=[])
        layout.draw(3)
        boxes = list(component.sV)
        x0 = min(v.view.xy[0] - v.view.w / 2 for v in boxes)
        y0 = min(v.view.xy[1] - v.view.h / 2 for v in boxes)
        x1 = max(v.view.xy[0] + v.view.w / 2 for v in boxes)
        y1 = max(v.view.xy[1] + v.view.h / 2 for v in boxes)
        dx, dy = left - x0, -y0
        for v in boxes:
            centres[v.data] = (v.view.xy[0] + dx, v.view.xy[1] + dy)
        for link in component.sE:
            routes[(link.v[0].data, link.v[1].data)] = [(x + dx, y + dy) for x, y in link.view.points]
        left += (x1 - x0) + COMPONENT_GAP
        height = max(height, y1 - y0)
    # grandalf keeps edges in sets: give them back in the caller's order (same bytes every run).
    routes = {edge: routes[edge] for edge in edges}
    return Placed(centres, routes, max(left - COMPONENT_GAP, 0.0), height)
