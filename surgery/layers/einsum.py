"""Einsum: a sum of products written as an index equation (``"bhid,bhjd->bhij"``), as
attention blocks write it (torch's ``einsum``, ONNX's Einsum). Caffe has no such layer."""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from surgery.errors import ShapeError, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, all_known, check_param, register_layer
from surgery.lazy_torch import fx, torch


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


def einsum_shape(equation: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The output shape of an explicit einsum equation over operands of ``shapes``, as torch
    computes it (a letter's sizes agree or are 1, which broadcasts; the ``...`` axes
    broadcast); a ValueError saying why it does not fit. Reads no values."""
    terms, output = equation.replace(" ", "").split("->")
    operands = terms.split(",")
    if len(operands) != len(shapes):
        raise ValueError(f"{len(operands)} operand(s) in the equation, {len(shapes)} input(s)")
    sizes: dict[str, int] = {}
    ellipses: list[tuple[int, ...]] = []
    for term, shape in zip(operands, shapes):
        head, dots, tail = term.partition("...")
        letters = head + tail
        if "..." in tail or (letters and not letters.isalpha()):
            raise ValueError(f"operand {term!r} is not letters with at most one '...'")
        spare = len(shape) - len(head) - len(tail)
        if spare < 0 or (not dots and spare):
            raise ValueError(f"operand {term!r} names {len(letters)} axes of a {len(shape)}-D input")
        if dots:
            ellipses.append(tuple(shape[len(head) : len(head) + spare]))
        for letter, size in zip(letters, (*shape[: len(head)], *shape[len(shape) - len(tail) :])):
            known = sizes.get(letter, 1)
            if size != known and 1 not in (size, known):
                raise ValueError(f"{letter!r} is {known} in one place and {size} in another")
            sizes[letter] = max(size, known) if 0 not in (size, known) else 0
    head, dots, tail = output.partition("...")
    unknown = [letter for letter in head + tail if letter not in sizes]
    if unknown:
        raise ValueError(f"output letter(s) {''.join(unknown)!r} name no input axis")
    middle = tuple(int(d) for d in np.broadcast_shapes(*ellipses)) if ellipses else ()
    return tuple(sizes[c] for c in head) + (middle if dots else ()) + tuple(sizes[c] for c in tail)


@register_layer
class Einsum(LayerType):
    """Params: equation (torch's syntax, with ``->``). No blobs; one input per operand."""

    name = "Einsum"
    fresh_output = True
    torch_functions = ("torch.einsum",)
    onnx_ops = ("Einsum",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        equation = layer.params.get("equation")
        if not isinstance(equation, str) or not _explicit(equation):
            raise ShapeError(f"equation {equation!r} must name its output with '->'", subject=layer.name)
        if not layer.inputs:
            raise ShapeError("needs at least one input", subject=layer.name)
        shapes = all_known(layer, in_shapes)
        try:
            return [einsum_shape(equation, [tuple(s) for s in shapes])]
        except ValueError as error:
            raise ShapeError(
                f"equation {equation!r} does not fit inputs shaped {[list(s) for s in shapes]}: {error}",
                subject=layer.name,
            ) from None

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
