"""Placing boxes: grandalf's Sugiyama (layered) layout, the algorithm Graphviz's ``dot``
uses, in pure Python. Inputs on top, data flowing down; long edges get bend points so
they run between boxes rather than through them.

grandalf's graph setup and crossing reduction grow with the square of the boxes (5,000
boxes took 30 s, 100,000 hours), and a model file decides how many there are. Past
:data:`MAX_SUGIYAMA` boxes the picture is laid out by rank alone (networkx's topological
generations, each wrapped into rows of :data:`ROW_BOXES`) with straight edges: linear in
the boxes and edges, less tidy, and still every layer in its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

X_SPACE = 28  # between boxes of one rank
Y_SPACE = 34  # between ranks
COMPONENT_GAP = 40
#: The most boxes laid out by grandalf (about half a second here); more are laid out by rank.
MAX_SUGIYAMA = 500
#: Boxes per row when a rank is laid out by :func:`_by_rank`.
ROW_BOXES = 40


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
    if len(sizes) > MAX_SUGIYAMA:
        return _by_rank(sizes, edges)
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


def _by_rank(sizes: dict[str, tuple[float, float]], edges: list[tuple[str, str]]) -> Placed:
    """Boxes in rows by topological generation (a box sits below everything it reads),
    each generation wrapped every :data:`ROW_BOXES` boxes and centred; straight edges."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(sizes)
    graph.add_edges_from(edges)
    order = {key: index for index, key in enumerate(sizes)}
    rows: list[list[str]] = []
    for generation in nx.topological_generations(graph):
        ranked = sorted(generation, key=order.__getitem__)
        rows += [ranked[i : i + ROW_BOXES] for i in range(0, len(ranked), ROW_BOXES)]
    widths = [sum(sizes[key][0] for key in row) + X_SPACE * (len(row) - 1) for row in rows]
    width = max(widths, default=0.0)
    centres: dict[str, tuple[float, float]] = {}
    top = 0.0
    for row, row_width in zip(rows, widths):
        height = max(sizes[key][1] for key in row)
        left = (width - row_width) / 2
        for key in row:
            box_width = sizes[key][0]
            centres[key] = (left + box_width / 2, top + height / 2)
            left += box_width + X_SPACE
        top += height + Y_SPACE
    routes = {(a, b): [centres[a], centres[b]] for a, b in edges}
    return Placed(centres, routes, width, max(top - Y_SPACE, 0.0))
