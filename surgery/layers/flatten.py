"""Flatten: merge axes ``axis..end_axis`` into one (Caffe's Flatten, torch.flatten)."""

from __future__ import annotations

import math
from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, known, register_layer
from surgery.lazy_torch import fx, nn, torch


@register_layer
class Flatten(LayerType):
    """Params: axis (default 1), end_axis (default -1)."""

    name = "Flatten"
    passes_resize = True
    torch_modules = ("torch.nn.Flatten",)
    torch_functions = ("torch.flatten", "flatten")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = known(layer, in_shapes)
        rank = len(shape)
        start, end = layer.params.get("axis", 1) % rank, layer.params.get("end_axis", -1) % rank
        if start > end:
            raise ShapeError(f"axis {start} comes after end_axis {end} for input {shape}")
        return [(*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(
            torch.flatten, (inputs[0], layer.params.get("axis", 1), layer.params.get("end_axis", -1))
        )

    def import_torch_module(self, module: nn.Flatten) -> dict[str, Any]:
        return {"axis": module.start_dim, "end_axis": module.end_dim}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        if not isinstance(start, int) or not isinstance(end, int):
            return None
        return {"axis": start, "end_axis": end}

    onnx_ops = ("Flatten",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0]
        rank = len(shape)
        start, end = layer.params.get("axis", 1) % rank, layer.params.get("end_axis", -1) % rank
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        if end == rank - 1 and start == 1:
            writer.node("Flatten", *io, axis=1)
            return
        # 0 keeps an axis (the batch stays dynamic), -1 takes the merged axes.
        target = [0] * start + [-1] + list(shape[end + 1 :])
        writer.node(
            "Reshape", [layer.inputs[0], writer.const(f"{layer.name}.shape", target)], list(layer.outputs), layer.name
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        axis = reader.attrs(node).get("axis", 1)
        shape = reader.shape(reader.blob(node.input[0]))
        axis %= max(len(shape), 1) if axis < 0 else len(shape) + 1
        if axis == 1 and len(shape) >= 2:
            return reader.layer(node, self.name, {"axis": 1, "end_axis": -1})
        if axis == 0:
            return None  # the batch axis merged into the features: no batch-agnostic form
        # ONNX's Flatten always gives 2-D (the axes before `axis` merged too): a reshape
        # whose first axis follows the batch.
        return reader.layer(node, "Reshape", {"shape": [-1, math.prod(shape[axis:])]})

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        param = writer.layer(layer, "Flatten").flatten_param
        param.axis, param.end_axis = layer.params.get("axis", 1), layer.params.get("end_axis", -1)

    caffe_param_field = "flatten_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"axis": param.axis, "end_axis": param.end_axis}
