"""The time axis, made explicit for the emitters: per-frame layers run on ``N*T`` frames.

In the IR a clip model's per-frame layers (``Layer.per_frame``) keep the time axis in
their blobs' shapes, ``(N, T, ...)``. Emitting them, :func:`lower_time` folds T into the
batch where a per-frame region begins (:class:`FoldTime`, ``(N, T, ...) -> (N*T, ...)``)
and unfolds it where the region ends (:class:`UnfoldTime`, back to ``(N, T, ...)``, N
and T read from the clip at run time), so every emitter writes ordinary image layers on
a bigger batch, and N and T stay symbolic.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Net, Shape
from surgery.layers.registry import LayerType, all_known, register_layer
from surgery.lazy_torch import fx


@register_layer
class FoldTime(LayerType):
    """``(N, T, ...) -> (N*T, ...)``: every frame becomes a batch item. No params."""

    name = "FoldTime"
    caffe_syntax = False

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) < 3:
            raise ShapeError(f"expects a clip (N, T, ...), got {shape}")
        return [(shape[0] * shape[1], *shape[2:])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_method("flatten", (inputs[0], 0, 1))

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        rest = list(writer.in_shapes(layer)[0][2:])
        target = writer.const(f"{layer.name}.shape", np.array([-1, *rest], np.int64))
        writer.node("Reshape", [layer.inputs[0], target], list(layer.outputs), layer.name)


@register_layer
class UnfoldTime(LayerType):
    """``(N*T, ...) -> (N, T, ...)``. Inputs: the folded frames, and the clip whose N and
    T they came from (read at run time, so both stay symbolic). No params."""

    name = "UnfoldTime"
    caffe_syntax = False

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 2)
        frames, clip = all_known(layer, in_shapes)
        if frames[0] != clip[0] * clip[1]:
            raise ShapeError(f"{frames[0]} frames do not make clips of {clip[:2]}")
        return [(clip[0], clip[1], *frames[1:])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        steps = graph.call_method("size", (inputs[1], 1))
        return graph.call_method("unflatten", (inputs[0], 0, (-1, steps)))

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        rest = list(writer.in_shapes(layer)[0][1:])
        clip_axes = f"{layer.name}/clip_axes"
        writer.node("Shape", [layer.inputs[1]], [clip_axes], clip_axes, start=0, end=2)
        target = f"{layer.name}/shape"
        writer.node(
            "Concat",
            [clip_axes, writer.const(f"{layer.name}.rest", np.array(rest, np.int64))],
            [target],
            target,
            axis=0,
        )
        writer.node("Reshape", [layer.inputs[0], target], list(layer.outputs), layer.name)


def has_time_axis(net: Net) -> bool:
    """Whether ``net`` is a clip model (some layers run per frame)."""
    return any(layer.per_frame for layer in net.layers())


def clip_input(net: Net) -> str:
    """The blob of the net's clip input (the Input layer marked with a time axis)."""
    for layer in net.input_layers():
        if layer.params.get("time_axis"):
            return layer.outputs[0]
    raise ShapeError("the net has per-frame layers but no clip input", fix="apply `sequence` to an image net")


def lower_time(net: Net) -> Net:
    """A copy of ``net`` (sharing weights) with the time axis folded around its per-frame
    layers, which become ordinary layers on ``N*T`` frames. ``net`` itself when it has
    no per-frame layers."""
    if not has_time_axis(net):
        return net
    low = net.copy()
    clip = clip_input(low)
    per_frame = {layer.name for layer in low.layers() if layer.per_frame}
    folded: dict[str, str] = {}  # clip-shaped blob -> its folded twin
    unfolded: dict[str, str] = {}  # per-frame blob -> its clip-shaped twin
    for layer in list(low.layers()):
        crossing = folded if layer.name in per_frame else unfolded
        for index, blob in enumerate(list(layer.inputs)):
            producer_per_frame = low.producer(blob).name in per_frame
            if producer_per_frame == (layer.name in per_frame):
                continue
            if blob not in crossing:
                crossing[blob] = _boundary(low, blob, clip, fold=layer.name in per_frame)
            low.set_input(layer.name, index, crossing[blob])
        layer.per_frame = False
    outputs = [blob for blob in low.outputs]
    if any(low.producer(b).name in per_frame for b in outputs):
        low.set_outputs(
            [
                unfolded.get(b) or _boundary(low, b, clip, fold=False) if low.producer(b).name in per_frame else b
                for b in outputs
            ]
        )
    low.invalidate()
    return low


def _boundary(net: Net, blob: str, clip: str, fold: bool) -> str:
    name = f"{blob}/{'fold' if fold else 'unfold'}_time"
    inputs = [blob] if fold else [blob, clip]
    net.add_layer(Layer(name, "FoldTime" if fold else "UnfoldTime", inputs=inputs, outputs=[name]))
    return name


def without_time(net: Net) -> Net:
    """A copy of ``net`` with its per-frame marks and time axis dropped: the image net
    that runs on one frame (the clip input becomes ``(N, C, H, W)``)."""
    copied = net.copy()
    for layer in copied.layers():
        layer.per_frame = False
        if layer.type == "Input" and layer.params.get("time_axis"):
            layer.params = copy.deepcopy(layer.params)
            shape = layer.params.pop("shape")
            layer.params.pop("time_axis")
            layer.params["shape"] = (shape[0], *shape[2:])
    copied.invalidate()
    return copied
