"""Pad: constant zero (or value) padding of the spatial axes, e.g. ONNX's asymmetric
convolution padding made explicit."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import fx

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer


@register_layer
class Pad(LayerType):
    """Params: pads (ONNX order: begin of every axis, then end of every axis), value."""

    name = "Pad"
    caffe_syntax = False
    passes_resize = True
    onnx_ops = ("Pad",)
    torch_functions = (F.pad,)

    def import_torch_call_shaped(
        self, target: Any, args: tuple, kwargs: dict, in_shapes: list[Shape | None]
    ) -> tuple[dict[str, Any] | None, Any]:
        """``F.pad(x, (left, right, top, bottom), value=v)``: constant padding only, by
        non-negative amounts (a negative pad crops; reflect/replicate are other layers)."""
        pad = args[1] if len(args) > 1 else kwargs.get("pad")
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value")
        shape = in_shapes[0] if in_shapes else None
        if (
            mode != "constant"
            or not isinstance(shape, tuple)
            or not isinstance(pad, (tuple, list))
            or len(pad) % 2
            or len(pad) > 2 * len(shape)
            or any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in pad)
            or not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))
        ):
            return None, None
        rank = len(shape)
        begin, end = [0] * rank, [0] * rank
        for k in range(len(pad) // 2):  # F.pad lists the last axis first
            begin[rank - 1 - k], end[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
        return {"pads": begin + end, "value": float(value or 0.0)}, None

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, pads = in_shapes[0], layer.params["pads"]
        if len(pads) != 2 * len(shape) or any(p < 0 for p in pads):
            raise ShapeError(f"pads {pads} do not fit input {shape} (need {2 * len(shape)} non-negative values)")
        rank = len(shape)
        return [tuple(d + pads[i] + pads[rank + i] for i, d in enumerate(shape))]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        pads, rank = layer.params["pads"], len(in_shapes[0])
        torch_pads = []
        for axis in reversed(range(rank)):  # F.pad lists the last axis first
            torch_pads += [pads[axis], pads[rank + axis]]
        return graph.call_function(
            F.pad, (inputs[0], tuple(torch_pads)), {"value": float(layer.params.get("value", 0.0))}
        )

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        pads = writer.const(f"{layer.name}.pads", np.array(layer.params["pads"], dtype=np.int64))
        value = writer.const(f"{layer.name}.value", np.array(layer.params.get("value", 0.0), dtype=np.float32))
        writer.node("Pad", [layer.inputs[0], pads, value], list(layer.outputs), layer.name, mode="constant")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        if attrs.get("mode", b"constant") not in (b"constant", "constant"):
            return None
        pads = attrs.get("pads") or reader.const_list(node.input[1] if len(node.input) > 1 else None)
        if pads is None or (len(node.input) > 3 and node.input[3]):
            return None  # pads computed at run time, or only some axes padded
        value = attrs.get("value")
        if value is None and len(node.input) > 2 and node.input[2]:
            values = reader.const_list(node.input[2])
            value = values[0] if values else 0.0
        return reader.layer(
            node,
            self.name,
            {"pads": [int(p) for p in pads], "value": float(value or 0.0)},
            inputs=[reader.blob(node.input[0])],
        )
