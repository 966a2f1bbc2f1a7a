"""Einsum: a sum of products written as an index equation (``"bhid,bhjd->bhij"``), as
attention blocks write it (torch's ``einsum``, ONNX's Einsum). Caffe has no such layer."""

from __future__ import annotations

import string
from typing import Any

import torch
from torch import fx

from surgery.errors import ShapeError, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, all_known, check_param, register_layer


def _explicit(equation: Any) -> bool:
    """An equation naming its output (``->``): implicit ones order the output by letter,
    which renaming letters for ONNX would change."""
    return isinstance(equation, str) and equation.count("->") == 1


def onnx_equation(equation: str) -> str | None:
    """The equation with spaces dropped and its letters renamed to lower case (ONNX's
    alphabet), or None when it has more than 26 distinct letters."""
    compact = equation.replace(" ", "")
    letters = sorted({c for c in compact if c.isalpha()})
    if len(letters) > len(string.ascii_lowercase):
        return None
    rename = dict(zip(letters, string.ascii_lowercase))
    return "".join(rename.get(c, c) for c in compact)


@register_layer
class Einsum(LayerType):
    """Params: equation (torch's syntax, with ``->``). No blobs; one input per operand."""

    name = "Einsum"
    fresh_output = True
    torch_functions = (torch.einsum,)
    onnx_ops = ("Einsum",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        equation = layer.params.get("equation")
        if not _explicit(equation):
            raise ShapeError(f"equation {equation!r} must name its output with '->'", subject=layer.name)
        if not layer.inputs:
            raise ShapeError("needs at least one input", subject=layer.name)
        shapes = all_known(layer, in_shapes)
        try:
            out = torch.einsum(equation, *(torch.empty(s, device="meta") for s in shapes))
        except (RuntimeError, ValueError) as error:
            raise ShapeError(
                f"equation {equation!r} does not fit inputs shaped {[list(s) for s in shapes]}: "
                f"{str(error).splitlines()[0]}",
                subject=layer.name,
            ) from None
        return [tuple(out.shape)]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(torch.einsum, (layer.params["equation"], *inputs))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        """``torch.einsum(eq, a, b)`` or ``torch.einsum(eq, [a, b])``."""
        if kwargs or not args or not _explicit(args[0]):
            return None
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        if not operands or any(operand is not None for operand in operands):
            return None  # an operand that is not a tensor input
        return {"equation": args[0]}

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        if writer.opset < 12:
            raise unsupported_in_onnx(layer, f"ONNX has Einsum from opset 12, not at {writer.opset}")
        equation = onnx_equation(layer.params["equation"])
        if equation is None:
            raise unsupported_in_onnx(layer, "its equation has more than 26 distinct letters")
        writer.node("Einsum", list(layer.inputs), list(layer.outputs), layer.name, equation=equation)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        equation = reader.attrs(node).get("equation")
        equation = equation.decode() if isinstance(equation, bytes) else equation
        check_param(_explicit(equation), f"Einsum equation {equation!r} must name its output with '->'")
        return reader.layer(node, self.name, {"equation": equation}, inputs=[reader.blob(n) for n in node.input])
