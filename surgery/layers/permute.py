"""Permute: reorder a tensor's axes (torch's ``permute`` / ``transpose``, ONNX's
Transpose). Caffe has no such layer."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, known, register_layer
from surgery.lazy_torch import fx, resolve_all

_SWAPS = ("torch.transpose", "transpose", "torch.swapaxes", "swapaxes")


def axis_order(layer: Layer, rank: int) -> list[int]:
    """The full permutation: ``order`` as given, or the swap of two axes (``swap``)."""
    params = layer.params
    if params.get("swap") is not None:
        a, b = (int(d) % rank for d in params["swap"])
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    order = [int(d) % rank for d in params["order"]] if rank else []
    if sorted(order) != list(range(rank)):
        raise ShapeError(f"order {list(params['order'])} is not a permutation of {rank} axes", subject=layer.name)
    return order


@register_layer
class Permute(LayerType):
    """Params: order (the new axis order), or swap (two axes to exchange, any rank)."""

    name = "Permute"
    caffe_syntax = False
    torch_functions = ("torch.permute", "permute", *_SWAPS)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = known(layer, in_shapes)
        return [tuple(shape[d] for d in axis_order(layer, len(shape)))]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_method("permute", (inputs[0], *axis_order(layer, len(known(layer, in_shapes)))))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if target in resolve_all(_SWAPS):
            names = ("input", "dim0", "dim1")
            values = dict(zip(names, args)) | kwargs
            dims = [values.get("dim0"), values.get("dim1")]
            return {"swap": dims} if all(isinstance(d, int) for d in dims) else None
        rest = args[1:]
        order = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
        order = order or list(kwargs.get("dims", ()))
        return {"order": order} if order and all(isinstance(d, int) for d in order) else None

    onnx_ops = ("Transpose",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        rank = len(writer.in_shapes(layer)[0])
        writer.node("Transpose", list(layer.inputs), list(layer.outputs), layer.name, perm=axis_order(layer, rank))

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        source = reader.blob(node.input[0])
        rank = len(reader.shape(source))
        order = list(reader.attrs(node).get("perm", range(rank - 1, -1, -1)))
        return reader.layer(node, self.name, {"order": order}, inputs=[source])
