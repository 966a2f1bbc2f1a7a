"""Constant folding at ONNX import: a node whose inputs are all constants is computed
once, with onnx's own reference evaluator, and its outputs become constants.

Converters write weights as small computations: Caffe's BatchNorm + Scale as
``Unsqueeze(scale) * x + Unsqueeze(bias)``, a shape as ``Concat(Shape, Gather, ...)``
over constants, a ``ConstantOfShape``. Folded here, every layer type downstream sees
plain constants, and nothing past the importer knows how the file spelt them.

A folded value is read and computed at import (``inspect`` and ``plan`` included); its
size is estimated first and refused past the memory budget.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from surgery.errors import ModelFormatError
from surgery.ir.budget import check_bytes

if TYPE_CHECKING:
    import onnx

#: Operators whose outputs are not a function of their inputs: a fresh draw on each run.
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _has_subgraph(node: onnx.NodeProto) -> bool:
    """Loop, Scan, If and the sequence maps run a graph of their own: a trip count of
    2**62 would never finish, so such nodes are never folded."""
    return any(attribute.HasField("g") or len(attribute.graphs) for attribute in node.attribute)


def constant_nodes(graph: onnx.GraphProto) -> set[int]:
    """The indices of the nodes that compute constants only: standard, deterministic
    operators without subgraphs whose every input is an initializer, a Constant's output,
    or the output of another such node (Identity looked through)."""
    constant = {tensor.name for tensor in graph.initializer}
    found = set()
    for index, node in enumerate(graph.node):
        given = [name for name in node.input if name]
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type == "Identity" and given and given[0] in constant:
            constant.update(node.output)
        elif (
            given
            and node.op_type not in _RANDOM
            and not _has_subgraph(node)
            and node.domain in ("", "ai.onnx")
            and all(name in constant for name in given)
        ):
            found.add(index)
            constant.update(name for name in node.output if name)
    return found


def fold(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> dict[str, np.ndarray]:
    """The outputs of ``node`` computed from its constant inputs ``values``."""
    check_bytes(
        f"folding the constant computation of ONNX node {node.name or node.output[0]!r} ({node.op_type})",
        _estimate_bytes(node, values, opset),
        fix="export the model with its constants folded (e.g. onnxsim), or raise SURGERY_MEMORY_BUDGET",
    )
    import onnx  # only a model with constant computations pays for importing onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for name, v in values.items()
    ]
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        with time_limit(FOLD_SECONDS):
            results = ReferenceEvaluator(model).run(None, values)
    except FoldTimeout:
        raise ModelFormatError(
            f"ONNX node {node.name or node.output[0]!r} ({node.op_type}) computes on constants only, and computing "
            f"it ran past {FOLD_SECONDS} s",
            fix="export the model with its constants folded (e.g. onnxsim); a real model folds in well under a second",
        ) from None
    except Exception as error:  # noqa: BLE001  (the evaluator raises whatever its numpy code does)
        raise ModelFormatError(
            f"ONNX node {node.name or node.output[0]!r} ({node.op_type}) computes on constants only, and "
            f"computing it failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            fix="check the node's attributes and inputs (the file may be corrupt), or export it folded",
        ) from None
    return {name: np.asarray(value) for name, value in zip([o.name for o in outputs], results)}


#: The longest one folded node may compute (seconds).
FOLD_SECONDS = 10


class FoldTimeout(Exception):
    """Raised inside a fold that ran past its time."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FoldTimeout` in the block once ``seconds`` have passed (a real-time
    timer; only the main thread has signals, elsewhere the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise FoldTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _estimate_bytes(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> float:
    """What folding ``node`` allocates at most: twice its largest input, or its outputs'
    size where that is larger (a broadcast, an Expand, a MatMul's outer product):
    onnx's shape inference gives the outputs' shapes without computing them."""
    given = [values[name] for name in node.input if name]
    largest = max((v.nbytes for v in given), default=0)
    inferred = _inferred_bytes(node, values, opset)
    if inferred is not None:
        return max(2 * largest, inferred)
    try:
        if node.op_type == "ConstantOfShape":
            return math.prod(int(d) for d in given[0].reshape(-1)) * 8
        if node.op_type == "Expand":
            shape = np.broadcast_shapes(given[0].shape, tuple(int(d) for d in given[1].reshape(-1)))
            return math.prod(shape) * given[0].itemsize
        if node.op_type == "Tile":
            return given[0].nbytes * math.prod(int(d) for d in given[1].reshape(-1))
        if node.op_type == "Range":
            start, limit, delta = (float(v.reshape(-1)[0]) for v in given[:3])
            return max(0.0, math.ceil((limit - start) / delta)) * 8 if delta else math.inf
    except (ValueError, IndexError, OverflowError):
        return math.inf  # shapes that do not even broadcast: refused with the node named
    return 2 * largest


#: Inputs of at most this many integer elements are given to shape inference by value
#: (a Reshape's or Expand's target shape); larger ones by shape and type only.
_BY_VALUE = 4096


def _inferred_bytes(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> float | None:
    """The outputs' total bytes as onnx's shape inference gives them, None where it
    leaves a dimension unknown."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    inputs, initializers = [], []
    for name, value in values.items():
        if value.dtype.kind in "iub" and value.size <= _BY_VALUE:
            initializers.append(numpy_helper.from_array(value, name))
        try:
            element = helper.np_dtype_to_tensor_dtype(value.dtype)
        except (KeyError, ValueError, TypeError):
            return None
        inputs.append(helper.make_tensor_value_info(name, element, value.shape))
    outputs = [name for name in node.output if name]
    graph = helper.make_graph([node], "estimate", inputs, [], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (onnx raises its own errors for a node it cannot type; estimate otherwise)
        return None
    known = {v.name: v.type.tensor_type for v in inferred.graph.value_info}
    total = 0.0
    for name in outputs:
        kind = known.get(name)
        if kind is None or not kind.HasField("shape") or not all(d.HasField("dim_value") for d in kind.shape.dim):
            return None
        itemsize = (
            helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize if kind.elem_type != TensorProto.UNDEFINED else 8
        )
        total += math.prod(d.dim_value for d in kind.shape.dim) * itemsize
    return total
