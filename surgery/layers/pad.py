"""Pad: constant zero (or value) padding of the spatial axes, e.g. ONNX's asymmetric
convolution padding made explicit; or reflect / edge padding of the spatial axes (torch's
``reflect`` / ``replicate``)."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, known, register_layer
from surgery.lazy_torch import F, fx


@register_layer
class Pad(LayerType):
    """Params: pads (ONNX order: begin of every axis, then end of every axis), value, mode
    (absent: constant; ``reflect`` or ``edge``: the spatial axes of a 3-D to 5-D input)."""

    name = "Pad"
    caffe_syntax = False
    passes_resize = True
    onnx_ops = ("Pad",)
    torch_functions = ("torch.nn.functional.pad",)

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
            mode not in _FROM_TORCH
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
        params = {"pads": begin + end, "value": float(value or 0.0)}
        return (params | {"mode": _FROM_TORCH[mode]} if mode != "constant" else params), None

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape, pads = known(layer, in_shapes), layer.params["pads"]
        if len(pads) != 2 * len(shape) or any(p < 0 for p in pads):
            raise ShapeError(f"pads {pads} do not fit input {shape} (need {2 * len(shape)} non-negative values)")
        rank = len(shape)
        mode = layer.params.get("mode", "constant")
        if mode != "constant":
            if mode not in _TO_TORCH or not 3 <= rank <= 5 or any(pads[i] or pads[rank + i] for i in range(2)):
                raise ShapeError(
                    f"{mode} padding pads the spatial axes of a 3-D to 5-D input; got pads {pads} on {shape}",
                    fix="pad only the axes after the channel axis, or use constant padding",
                )
            if mode == "reflect" and any(max(pads[i], pads[rank + i]) >= shape[i] for i in range(2, rank)):
                raise ShapeError(f"reflect padding {pads} needs each pad below its axis' size {shape}")
        return [tuple(d + pads[i] + pads[rank + i] for i, d in enumerate(shape))]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        pads, rank = layer.params["pads"], len(known(layer, in_shapes))
        mode = layer.params.get("mode", "constant")
        torch_pads = []
        for axis in reversed(range(2 if mode != "constant" else 0, rank)):  # F.pad lists the last axis first
            torch_pads += [pads[axis], pads[rank + axis]]
        if mode != "constant":
            return graph.call_function(F.pad, (inputs[0], tuple(torch_pads)), {"mode": _TO_TORCH[mode]})
        return graph.call_function(
            F.pad, (inputs[0], tuple(torch_pads)), {"value": float(layer.params.get("value", 0.0))}
        )

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        pads = writer.const(f"{layer.name}.pads", np.array(layer.params["pads"], dtype=np.int64))
        mode = layer.params.get("mode", "constant")
        if mode != "constant":
            writer.node("Pad", [layer.inputs[0], pads], list(layer.outputs), layer.name, mode=mode)
            return
        value = float(layer.params.get("value", 0.0))
        if value == 0.0 and _feeds_max_pooling(layer, writer.net):
            # onnxruntime up to 1.31 folds a Pad whose value is all zero bytes into a
            # following MaxPool's pads, where padding is -inf: the zeros are lost (a window
            # of negatives gives its maximum, not 0) or the session refuses to load (pads
            # not smaller than the kernel). -0.0 pads the same values, is not all zero
            # bytes, and so stays a Pad.
            value = -0.0
        constant = writer.const(f"{layer.name}.value", np.array(value, dtype=np.float32))
        writer.node("Pad", [layer.inputs[0], pads, constant], list(layer.outputs), layer.name, mode="constant")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", *_TO_TORCH):
            return None  # opset 19's wrap
        pads = attrs.get("pads") or reader.const_list(node.input[1] if len(node.input) > 1 else None)
        if pads is None or (len(node.input) > 3 and node.input[3]):
            return None  # pads computed at run time, or only some axes padded
        value = attrs.get("value")
        if value is None and len(node.input) > 2 and node.input[2]:
            values = reader.const_list(node.input[2])
            value = values[0] if values else 0.0
        params: dict[str, Any] = {"pads": [int(p) for p in pads], "value": float(value or 0.0)}
        if mode != "constant":
            params["mode"] = mode
        return reader.layer(node, self.name, params, inputs=[reader.blob(node.input[0])])


#: ONNX's padding modes besides constant, as torch's F.pad names them, and back.
_TO_TORCH = {"reflect": "reflect", "edge": "replicate"}
_FROM_TORCH = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _feeds_max_pooling(layer: Layer, net: Any) -> bool:
    """Whether a MAX Pooling layer reads the padded blob."""
    return any(
        consumer.type == "Pooling" and consumer.params.get("pool") == "MAX"
        for blob in layer.outputs
        for consumer, _ in net.consumers(blob)
    )
