"""Operators an exporter wrote as their formula, read back as the operator, and guards
that cannot fire, dropped.

The TorchScript exporter (and opsets before 20, which have no ``Gelu``) writes
``F.gelu(x)`` as ``x * 0.5 * (1 + erf(x / sqrt(2)))``: five nodes around an ``Erf``
that surgery has no layer for. :func:`fuse_gelu` rewrites each such chain into one
``Gelu`` node (exact, ``approximate="none"``), the layer it is, before the importer reads
the graph. A chain whose constants are not those, or whose intermediate values are read
elsewhere, is left as it is (and ``Erf`` is then refused by name).

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


def fuse_gelu(graph: onnx.GraphProto, constant: Callable[[str], np.ndarray | None]) -> int:
    """Rewrite every ``x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5`` chain (either operand
    order, ``* (1 / sqrt(2))`` for the division, ``0.5`` applied to ``x`` first) into one
    ``Gelu`` node; returns how many. ``constant(name)`` is a value's constant or None."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def only_reader(name: str) -> onnx.NodeProto | None:
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in outputs else None

    producer = {name: node for node in graph.node for name in node.output}
    fused: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        scaled = producer.get(erf.input[0])
        if scaled is None or scaled.op_type not in ("Div", "Mul") or not only_reader(scaled.output[0]):
            continue
        x = scaled.input[0]
        factor = constant(scaled.input[1])
        if not (_is(factor, math.sqrt(2)) if scaled.op_type == "Div" else _is(factor, 1 / math.sqrt(2))):
            continue
        plus = only_reader(erf.output[0])
        if plus is None or plus.op_type != "Add" or not _is(constant(_other(plus, erf.output[0]) or ""), 1.0):
            continue
        times = only_reader(plus.output[0])
        if times is None or times.op_type != "Mul":
            continue
        chain = [scaled, erf, plus, times]
        partner = _other(times, plus.output[0])
        half = producer.get(partner or "")
        if partner == x:  # (x * (1 + erf)) * 0.5
            last = only_reader(times.output[0])
            if last is None or last.op_type != "Mul" or not _is(constant(_other(last, times.output[0]) or ""), 0.5):
                continue
            chain.append(last)
        elif (
            half is not None
            and half.op_type == "Mul"
            and _other(half, x) is not None
            and _is(constant(_other(half, x) or ""), 0.5)
        ):  # (x * 0.5) * (1 + erf): the half is read by this chain alone
            if only_reader(half.output[0]) is not times:
                continue
            chain.insert(0, half)
        else:
            continue
        gelu = messages().NodeProto(
            op_type="Gelu", input=[x], output=[chain[-1].output[0]], name=chain[-1].name or erf.name
        )
        fused.append((chain, gelu))
    if not fused:
        return 0
    drop = {id(node) for chain, _ in fused for node in chain}
    replacement = {id(chain[-1]): gelu for chain, gelu in fused}
    kept = [replacement.get(id(node), node) for node in graph.node if id(node) not in drop or id(node) in replacement]
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
