"""Shape inference by running a callable on meta tensors (no data, no compute).

Used for the layers surgery cannot reason about itself: opaque modules and calls.
A blob's "shape" is a tuple for a tensor, and the value itself for a non-tensor
(``x.size(0)`` feeds ``view``), so such values keep flowing between opaque calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer
from surgery.ir.blob import dtype_name
from surgery.lazy_torch import torch


class NonTensor:
    """A non-tensor value flowing between layers (an int from ``x.size(0)``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"NonTensor({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NonTensor) and other.value == self.value

    def __hash__(self) -> int:
        return hash(repr(self.value))


class TypedShape(tuple):
    """The shape of a tensor that is not float32 (an index table read by an opaque call):
    a tuple that also carries the element type, so shape inference builds the right meta
    tensor. Made from a torch or numpy dtype or a name; kept by name, so an ONNX model's
    int64 constants are planned without torch."""

    dtype_name: str

    def __new__(cls, shape: Any, dtype: Any) -> TypedShape:
        made = super().__new__(cls, tuple(shape))
        made.dtype_name = dtype_name(dtype)
        return made

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype (imports torch)."""
        return getattr(torch, self.dtype_name)

    def __getnewargs__(self) -> tuple:  # copy and pickle rebuild it with its dtype
        return (tuple(self), self.dtype_name)

    def __repr__(self) -> str:
        return f"{tuple(self)!r}:{self.dtype_name}"


def shape_of(tensor: torch.Tensor) -> tuple[int, ...]:
    """A tensor's shape, typed when its dtype is not float32."""
    shape = tuple(tensor.shape)
    return shape if tensor.dtype == torch.float32 else TypedShape(shape, tensor.dtype)


def _to_meta(shape: Any) -> Any:
    if isinstance(shape, NonTensor):
        return shape.value
    return torch.empty(shape, device="meta", dtype=getattr(shape, "dtype", torch.float32))


def _from_result(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return shape_of(value)
    if isinstance(value, torch.Size):
        return NonTensor(tuple(value))
    return NonTensor(value)


def run_on_meta(fn: Callable[..., Any], layer: Layer, in_shapes: list[Any], n_outputs: int) -> list[Any]:
    """Output shapes of ``fn`` applied to meta tensors shaped ``in_shapes``."""
    try:
        with torch.no_grad():
            result = fn(*(_to_meta(s) for s in in_shapes))
    except Exception as error:  # noqa: BLE001  (the user's module raised: a shape problem)
        raise ShapeError(f"fails on inputs shaped {in_shapes}: {type(error).__name__}: {error}") from None
    if n_outputs == 1:
        return [_from_result(result)]
    return [_from_result(item) for item in result]


@dataclass(frozen=True)
class TracedShapes:
    """A traced call's tensor input shapes and output shape at the import's batch size and
    at a second one (see ``surgery.importers.batch_probe``): what a layer type that reads
    its parameters off the shapes (``x.view(x.size(0), -1)`` as a Reshape) is handed."""

    inputs: tuple
    output: Any
    alternate_inputs: tuple
    alternate_output: Any
