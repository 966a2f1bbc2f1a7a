"""TemporalPooling: the mean or max over a clip's time axis, ``(N, T, ...) -> (N, ...)``.

Written like Caffe's pooling: ``layer { type: "TemporalPooling" pooling_param { pool: AVE } }``
(AVE or MAX). It needs the whole clip, so a streaming step model refuses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx
from surgery.protos import enum_name

POOLS = ("MAX", "AVE")


@register_layer
class TemporalPooling(LayerType):
    """Params: pool ("AVE" or "MAX")."""

    name = "TemporalPooling"
    passes_resize = True
    fresh_output = True
    #: Its output depends on every step: a streaming step model cannot run it.
    needs_whole_clip = True

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) < 3:
            raise ShapeError(
                f"expects a clip's features (N, T, ...), got {shape}",
                fix="put it in a `sequence` head, after the per-frame layers",
            )
        return [(shape[0], *shape[2:])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_method("amax" if layer.params["pool"] == "MAX" else "mean", (inputs[0], 1))

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        op = "ReduceMax" if layer.params["pool"] == "MAX" else "ReduceMean"
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        if writer.opset >= 18:  # the axes became an input
            axes = writer.const(f"{layer.name}.axes", np.array([1], np.int64))
            writer.node(op, [layer.inputs[0], axes], *io[1:], keepdims=0)
        else:
            writer.node(op, *io, axes=[1], keepdims=0)

    caffe_param_field = "pooling_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        pool = enum_name(param, "pool")
        if pool not in POOLS:
            raise ShapeError(f"temporal pooling is AVE or MAX, not {pool}", fix="pool: AVE or pool: MAX")
        return {"pool": pool}
