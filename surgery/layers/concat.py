"""Concat: join blobs along one axis (torch.cat)."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, all_known, check_axis, register_layer
from surgery.lazy_torch import fx, torch


@register_layer
class Concat(LayerType):
    """Params: axis (default 1)."""

    name = "Concat"
    fresh_output = True
    torch_functions = ("torch.cat", "torch.concat")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if not in_shapes:
            raise ShapeError("needs at least one input")
        shapes = all_known(layer, in_shapes)
        first = shapes[0]
        axis = check_axis(layer.params.get("axis", 1), first)
        for shape in shapes[1:]:
            if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shape, first)) if i != axis):
                raise ShapeError(f"inputs {in_shapes} differ outside the concatenation axis {axis}")
        return [(*first[:axis], sum(s[axis] for s in shapes), *first[axis + 1 :])]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(torch.cat, (list(inputs),), {"dim": layer.params.get("axis", 1)})

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        return {"axis": dim} if isinstance(dim, int) else None

    onnx_ops = ("Concat",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        writer.node("Concat", list(layer.inputs), list(layer.outputs), layer.name, axis=layer.params.get("axis", 1))

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        return reader.layer(
            node,
            self.name,
            {"axis": reader.attrs(node)["axis"]},
            inputs=[reader.blob_or_const(n, node) for n in node.input],
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        writer.layer(layer, "Concat").concat_param.axis = layer.params.get("axis", 1)

    caffe_param_field = "concat_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"axis": param.axis if param.HasField("axis") or not param.HasField("concat_dim") else param.concat_dim}
