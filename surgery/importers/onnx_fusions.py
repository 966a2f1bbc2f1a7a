"""Operators an exporter wrote as their formula, read back as the operator, and guards
that cannot fire, dropped.

The TorchScript exporter (and opsets before 20, which have no ``Gelu``) writes
``F.gelu(x)`` as ``x * 0.5 * (1 + erf(x / sqrt(2)))``: five nodes around an ``Erf``
that surgery has no layer for; its tanh approximation as nine nodes around a ``Tanh``.
:func:`fuse_gelu` rewrites each such chain into one ``Gelu`` node (``approximate`` "none"
or "tanh"), the layer it is, before the importer reads the graph. A chain whose
constants are not those, or whose intermediate values are read elsewhere, is left as it
is (``Erf`` is then refused by name; the tanh form reads as its arithmetic).

The dynamo exporter writes ``F.scaled_dot_product_attention`` as its math with a guard
after the softmax, ``Where(IsNaN(p), 0, p)``, for rows masked out entirely (a softmax of
only -inf is NaN). :func:`drop_nan_guards` drops the guard where no such row can exist:
the softmax reads scores with nothing added, or with a constant of finite values added
(the exporter writes a masked-out position as float32's lowest number, not -inf). There
the guard returns its input unchanged unless a score overflows to -inf (beyond -3.4e38),
so the attention is what the file computes. :func:`drop_zero_masks` drops the mask
itself where it is all zeros (transformers' all-True mask, written by the exporter as a
zero constant of the example's batch): adding zeros changes no score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from surgery.importers.onnx_proto import messages

if TYPE_CHECKING:  # the graph is onnx's message type or surgery's own compiled copy of it
    import onnx

#: how far a written constant may be from sqrt(2), 1 and 0.5 (exporters round them to float32)
_CLOSE = 1e-6


def _is(value: np.ndarray | None, number: float) -> bool:
    return value is not None and value.size == 1 and abs(float(value.reshape(())) - number) <= _CLOSE * number


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not ``name`` (None unless exactly one is)."""
    inputs = list(node.input)
    if len(inputs) != 2 or inputs.count(name) != 1:
        return None
    return inputs[1 - inputs.index(name)]


class _Graph:
    """Who writes and who reads each value of a graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> None:
        self.constant = constant
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.producer = {name: node for node in graph.node for name in node.output}

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` (None when several do, or the graph returns it)."""
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def times_constant(self, node: onnx.NodeProto | None, value: float) -> str | None:
        """For ``Mul(v, c)`` (either order) with ``c`` about ``value``: ``v``."""
        if node is None or node.op_type != "Mul" or len(node.input) != 2:
            return None
        for k in (0, 1):
            if _is(self.constant(node.input[1 - k]), value) and self.constant(node.input[k]) is None:
                return str(node.input[k])
        return None


def _erf_head(g: _Graph, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x / sqrt(2)`` (or ``x * (1 / sqrt(2))``) into the Erf: ``x`` and the nodes."""
    scaled = g.producer.get(erf.input[0])
    if scaled is None or not g.only_reader(scaled.output[0]):
        return None
    if scaled.op_type == "Div" and _is(g.constant(scaled.input[1]), math.sqrt(2)):
        return str(scaled.input[0]), [scaled, erf]
    x = g.times_constant(scaled, 1 / math.sqrt(2))
    return (x, [scaled, erf]) if x is not None else None


def _tanh_head(g: _Graph, tanh: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """``sqrt(2 / pi) * (x + 0.044715 * x^3)`` into the Tanh (``x^3`` as ``x * (x * x)`` or
    ``Pow(x, 3)``): ``x`` and the nodes."""
    scaled = g.producer.get(tanh.input[0])
    inner_name = g.times_constant(scaled, math.sqrt(2 / math.pi))
    inner = g.producer.get(inner_name or "")
    if scaled is None or inner is None or inner.op_type != "Add" or not g.only_reader(inner.output[0]):
        return None
    for k in (0, 1):
        x, term = str(inner.input[k]), g.producer.get(inner.input[1 - k])
        cube_name = g.times_constant(term, 0.044715)
        cube = g.producer.get(cube_name or "")
        if term is None or cube is None or not g.only_reader(term.output[0]) or not g.only_reader(cube.output[0]):
            continue
        if cube.op_type == "Pow" and cube.input[0] == x and _is(g.constant(cube.input[1]), 3.0):
            return x, [cube, term, inner, scaled, tanh]
        square = g.producer.get(_other(cube, x) or "")
        if (
            cube.op_type == "Mul"
            and square is not None
            and square.op_type == "Mul"
            and list(square.input) == [x, x]
            and g.only_reader(square.output[0]) is cube
        ):
            return x, [square, cube, term, inner, scaled, tanh]
    return None


def _gelu_tail(g: _Graph, x: str, last: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """``+ 1 -> * x -> * 0.5`` after ``last`` (the Erf or Tanh), or ``(x * 0.5) * (1 + ...)``:
    the nodes, in order, the half first where it comes first."""
    plus = g.only_reader(last.output[0])
    if plus is None or plus.op_type != "Add" or not _is(g.constant(_other(plus, last.output[0]) or ""), 1.0):
        return None
    times = g.only_reader(plus.output[0])
    if times is None or times.op_type != "Mul":
        return None
    partner = _other(times, plus.output[0])
    if partner == x:  # (x * (1 + f)) * 0.5
        half = g.only_reader(times.output[0])
        return [plus, times, half] if half is not None and g.times_constant(half, 0.5) == times.output[0] else None
    half = g.producer.get(partner or "")
    if g.times_constant(half, 0.5) == x and half is not None and g.only_reader(half.output[0]) is times:
        return [half, plus, times]  # (x * 0.5) * (1 + f)
    return None


def fuse_gelu(graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> int:
    """Rewrite every GELU written as its formula into one ``Gelu`` node: the exact one,
    ``x * 0.5 * (1 + erf(x / sqrt 2))``, and the tanh one, ``x * 0.5 * (1 + tanh(sqrt(2 /
    pi) * (x + 0.044715 x^3)))`` (``approximate="tanh"``), in either operand order and
    with the half applied first or last; returns how many. ``constant(name)`` is a
    value's constant or None."""
    g = _Graph(graph, constant)
    fused: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    for node in graph.node:
        if node.op_type not in ("Erf", "Tanh"):
            continue
        head = _erf_head(g, node) if node.op_type == "Erf" else _tanh_head(g, node)
        tail = _gelu_tail(g, head[0], node) if head is not None else None
        if head is None or tail is None:
            continue
        x, chain = head[0], head[1] + tail
        gelu = messages().NodeProto(
            op_type="Gelu", input=[x], output=[chain[-1].output[0]], name=chain[-1].name or node.name
        )
        if node.op_type == "Tanh":
            gelu.attribute.add(name="approximate", s=b"tanh", type=messages().AttributeProto.STRING)
        fused.append((chain, gelu))
    if not fused:
        return 0
    drop = {id(node) for chain, _ in fused for node in chain}
    last = {id(chain[-1]): gelu for chain, gelu in fused}  # the node writing the GELU's output
    kept = [last.get(id(node), node) for node in graph.node if id(node) not in drop or id(node) in last]
    del graph.node[:]
    graph.node.extend(kept)
    return len(fused)


def drop_nan_guards(graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> int:
    """Drop each ``Where(IsNaN(p), 0, p)`` after a ``Softmax`` whose scores no mask can
    make all -inf (see the module docstring); returns how many. Readers of the guard's
    output read ``p`` instead."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {name: node for node in graph.node for name in node.output}
    outputs = {value.name for value in graph.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for check in [n for n in graph.node if n.op_type == "IsNaN"]:
        probabilities = check.input[0]
        softmax = producer.get(probabilities)
        readers = consumers.get(check.output[0], [])
        if (
            softmax is None
            or softmax.op_type != "Softmax"
            or len(readers) != 1
            or not _no_full_mask(softmax, producer, constant)
        ):
            continue
        guard = readers[0]
        zero = constant(guard.input[1]) if guard.op_type == "Where" and len(guard.input) == 3 else None
        if (
            zero is None
            or list(guard.input) != [check.output[0], guard.input[1], probabilities]
            or np.any(zero != 0)
            or guard.output[0] in outputs
        ):
            continue
        rename[guard.output[0]] = probabilities
        drop |= {id(check), id(guard)}
    if not drop:
        return 0
    kept = [node for node in graph.node if id(node) not in drop]
    for node in kept:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


def _no_full_mask(
    softmax: onnx.NodeProto, producer: dict[str, onnx.NodeProto], constant: Callable[[str], np.ndarray | None]
) -> bool:
    """Whether the softmax's scores are a product (MatMul, a scaled one) or one plus a
    constant of finite values: no row can be all -inf."""
    scores = producer.get(softmax.input[0])
    if scores is None:
        return False
    if scores.op_type == "Add":
        for k, name in enumerate(scores.input):
            added = constant(name)
            other = producer.get(scores.input[1 - k]) if len(scores.input) == 2 else None
            if added is not None and np.isfinite(added).all() and other is not None:
                return other.op_type in ("MatMul", "Mul", "Div")
        return False
    return scores.op_type in ("MatMul", "Mul", "Div")


def drop_zero_masks(graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> int:
    """Drop each ``Add(scores, zeros)`` whose result only a ``Softmax`` reads (an attention
    mask that keeps everything); returns how many. The softmax reads the scores."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    drop: set[int] = set()
    for add in [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2]:
        readers = consumers.get(add.output[0], [])
        if not readers or any(r.op_type != "Softmax" for r in readers) or add.output[0] in outputs:
            continue
        for k, name in enumerate(add.input):
            zeros = constant(name)
            if zeros is not None and zeros.size and not np.any(zeros) and constant(add.input[1 - k]) is None:
                for reader in readers:
                    reader.input[0] = add.input[1 - k]
                drop.add(id(add))
                break
    if drop:
        kept = [node for node in graph.node if id(node) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
    return len(drop)


__all__ = ["drop_nan_guards", "drop_zero_masks", "fuse_gelu"]
