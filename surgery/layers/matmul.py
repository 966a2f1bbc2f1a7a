"""MatMul: the matrix product of two computed tensors, with numpy's batching rules
(torch's ``matmul`` / ``@`` / ``bmm``, ONNX's MatMul). A product with a weight is an
InnerProduct instead. Caffe has no such layer."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, all_known, register_layer
from surgery.lazy_torch import fx, torch


def matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of ``a @ b`` as numpy and torch define it (a 1-D operand is a row or a
    column that the result drops; the leading axes broadcast), or None when the inner
    sizes differ or the leading axes do not broadcast. Reads no values."""
    if not a or not b:
        return None
    rows, cols = (1, *a) if len(a) == 1 else a, (*b, 1) if len(b) == 1 else b
    if rows[-1] != cols[-2]:
        return None
    try:
        batch = tuple(int(d) for d in np.broadcast_shapes(rows[:-2], cols[:-2]))
    except ValueError:
        return None
    return batch + ((rows[-2],) if len(a) > 1 else ()) + ((cols[-1],) if len(b) > 1 else ())


@register_layer
class MatMul(LayerType):
    """No params, no blobs; two inputs."""

    name = "MatMul"
    fresh_output = True
    torch_functions = ("torch.matmul", operator.matmul, "torch.bmm", "matmul", "bmm")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 2)
        a, b = all_known(layer, in_shapes)
        out = matmul_shape(tuple(a), tuple(b))
        if out is None:
            raise ShapeError(f"cannot multiply matrices shaped {list(a)} and {list(b)}", subject=layer.name)
        return [out]

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
