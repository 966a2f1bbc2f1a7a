"""MatMul: the matrix product of two computed tensors, with numpy's batching rules
(torch's ``matmul`` / ``@`` / ``bmm``, ONNX's MatMul). A product with a weight is an
InnerProduct instead. Caffe has no such layer."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, all_known, register_layer


@register_layer
class MatMul(LayerType):
    """No params, no blobs; two inputs."""

    name = "MatMul"
    fresh_output = True
    torch_functions = (torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 2)
        a, b = all_known(layer, in_shapes)
        try:
            out = torch.matmul(torch.empty(a, device="meta"), torch.empty(b, device="meta"))
        except RuntimeError:
            raise ShapeError(f"cannot multiply matrices shaped {list(a)} and {list(b)}", subject=layer.name) from None
        return [tuple(out.shape)]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(torch.matmul, tuple(inputs))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        return {} if len(args) == 2 and all(a is None for a in args) and not kwargs else None

    onnx_ops = ("MatMul",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        writer.node("MatMul", list(layer.inputs), list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if any(reader.const_shape(name) is not None for name in node.input):
            return None  # a product with a weight: an InnerProduct
        return reader.layer(node, self.name, {}, inputs=[reader.blob(n) for n in node.input])
