"""Dynamic axes of the deploy ONNX file besides the batch: ``{"data": [2, 3]}`` (the
spec writes ``dynamic_axis: "data:2"``).

A layer's ONNX form may bake an input size into the graph (a reshape target, a pooling
window chosen to reach a fixed output size). Rather than trusting each layer type to
know that, the graph is built a second time with the dynamic axes doubled: every node
and shape constant must come out the same, or the axis cannot be dynamic and the error
names the node that depends on it. The output axes that change between the two builds
become symbolic too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from surgery.errors import ShapeError, SpecError, SurgeryError, did_you_mean
from surgery.ir import Net

#: Initializers at most this large are compared by value between the two builds (shape
#: constants and averaging matrices are small; weights never depend on the input size).
_COMPARED_BYTES = 1 << 16

DynamicAxes = dict[str, set[int]]


def parse_dynamic_axes(pairs: Iterable[str]) -> dict[str, list[int]]:
    """``["data:2", "data:3"]`` -> ``{"data": [2, 3]}``."""
    axes: dict[str, list[int]] = {}
    for pair in pairs:
        name, _, axis = pair.rpartition(":")
        if not name or not axis.lstrip("-").isdigit():
            raise SpecError(
                f'dynamic_axis {pair!r} is not "input:axis"',
                subject=pair,
                fix='e.g. dynamic_axis: "data:2" for the height of input "data"',
            )
        axes.setdefault(name, []).append(int(axis))
    return axes


def resolve(net: Net, requested: Mapping[str, Iterable[int]] | None, dynamic_batch: bool) -> DynamicAxes:
    """The dynamic axes per net input (axis 0 when ``dynamic_batch``), checked."""
    inputs = {layer.outputs[0]: len(layer.params["shape"]) for layer in net.input_layers()}
    axes: DynamicAxes = {name: ({0} if dynamic_batch else set()) for name in inputs}
    for layer in net.input_layers():  # a clip's time axis is always symbolic
        if layer.params.get("time_axis"):
            axes[layer.outputs[0]].add(layer.params["time_axis"])
    for name, wanted in (requested or {}).items():
        if name not in inputs:
            raise SpecError(
                f"dynamic_axis names {name!r}, which is not an input of the net",
                subject=name,
                fix=did_you_mean(name, inputs) or f"inputs: {', '.join(inputs)}",
            )
        for axis in wanted:
            if not -inputs[name] <= axis < inputs[name]:
                raise SpecError(
                    f"input {name!r} has {inputs[name]} axes, so axis {axis} cannot be dynamic",
                    subject=f"{name}:{axis}",
                )
            axes[name].add(axis % inputs[name])
    return axes


def resized_copy(net: Net, axes: DynamicAxes) -> Net:
    """A copy of ``net`` (sharing weights) whose inputs have every non-batch dynamic axis
    doubled; its shape inference must succeed."""
    copy = net.copy()
    for layer in copy.input_layers():
        shape = list(layer.params["shape"])
        for axis in axes.get(layer.outputs[0], ()):
            if axis:
                shape[axis] *= 2
        layer.params["shape"] = tuple(shape)
    copy.invalidate()
    try:
        copy.shapes()
    except ShapeError as error:
        raise SpecError(
            f"the net's shapes are fixed along a requested dynamic axis: {error.message}",
            subject=error.subject,
            fix="leave that axis fixed (remove its dynamic_axis)",
        ) from None
    return copy


def varying_axes(net: Net, resized: Net, blobs: Iterable[str]) -> DynamicAxes:
    """For each blob, the axes whose size differs between the two nets."""
    return {
        blob: {i for i, (a, b) in enumerate(zip(net.known_shape(blob), resized.known_shape(blob))) if a != b}
        for blob in blobs
    }


def check_same_graph(writer: Any, twin: Any) -> None:
    """Refuse when two builds (two ``OnnxWriter``s) differ in any node or constant."""
    for node, other in itertools.zip_longest(writer.nodes, twin.nodes):
        if node is None or other is None or node.SerializeToString() != other.SerializeToString():
            first = node if node is not None else other
            raise _baked(f"node {first.name!r} ({first.op_type})")
    for name, array in writer.tensors.items():
        other = twin.tensors.get(name)
        if (
            other is None
            or other.shape != array.shape
            or (array.nbytes <= _COMPARED_BYTES and not np.array_equal(array, other))
        ):
            raise _baked(f"constant {name!r}")


def _baked(what: str) -> SurgeryError:
    return SpecError(
        f"{what} depends on the input's size, so the ONNX graph cannot leave that axis dynamic",
        fix="leave that axis fixed (remove its dynamic_axis), or replace the layer",
    )
