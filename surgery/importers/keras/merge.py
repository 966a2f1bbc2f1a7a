"""Keras merge layers (Add, Multiply, Concatenate, ...) and arithmetic a functional model
records as operations (``x + 3.0``, ``x * (1 / 6)`` become ``keras.ops`` nodes)."""

from __future__ import annotations

from surgery.importers.keras.builder import Builder, Call, Tensor, keras_layer


def _operands(call: Call) -> list[Tensor | float]:
    """The call's tensors and numbers, in order (a merge layer passes one list)."""
    flat: list = []
    for arg in call.args:
        flat.extend(arg if isinstance(arg, list) else [arg])
    operands = [a if isinstance(a, Tensor) else float(a) for a in flat if isinstance(a, (Tensor, int, float))]
    if len(operands) != len(flat):
        raise call.refuse("an argument is neither a tensor nor a number")
    return operands


def _same_layout(call: Call, tensors: list[Tensor]) -> None:
    first = tensors[0]
    for other in tensors[1:]:
        if (other.rank, other.channel_at, other.flattened) != (first.rank, first.channel_at, first.flattened):
            raise call.refuse(f"inputs of shapes {[list(t.shape) for t in tensors]} are laid out differently")


def _broadcast(b: Builder, tensors: list[Tensor]) -> tuple:
    """The output tensor of an elementwise layer (shapes broadcast, Keras order)."""
    shape = tuple(max(dims) for dims in zip(*(t.shape for t in tensors)))
    first = tensors[0]
    return shape, first.channel_at, first.flattened


_OPERATIONS = {"Add": "SUM", "Subtract": "SUM", "Multiply": "PROD", "Average": "SUM", "Maximum": "MAX"}


@keras_layer("Add", "Subtract", "Multiply", "Average", "Maximum", "TrueDivide", "Divide")
def elementwise(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """Two or more tensors: an Eltwise; a tensor and a number: a Power (scale or shift)."""
    operands = _operands(call)
    tensors = [t for t in operands if isinstance(t, Tensor)]
    numbers = [n for n in operands if not isinstance(n, Tensor)]
    kind = call.class_name
    if len(tensors) == 1 and len(numbers) == 1 and kind in ("Add", "Subtract", "Multiply", "TrueDivide", "Divide"):
        x, number = tensors[0], numbers[0]
        first = isinstance(operands[0], Tensor)
        if kind in ("TrueDivide", "Divide"):
            if not first or number == 0:
                raise call.refuse("only a tensor divided by a non-zero number has a mapping")
            params = {"power": 1.0, "scale": 1.0 / number, "shift": 0.0}
        elif kind == "Multiply":
            params = {"power": 1.0, "scale": number, "shift": 0.0}
        elif kind == "Add":
            params = {"power": 1.0, "scale": 1.0, "shift": number}
        else:  # x - c, or c - x
            params = {"power": 1.0, "scale": 1.0 if first else -1.0, "shift": -number if first else number}
        return b.tensor(b.add(call.name, "Power", [x.blob], params), x.shape, x.channel_at, x.flattened)
    if numbers or len(tensors) < 2:
        raise call.refuse(f"{kind} of {len(tensors)} tensor(s) and {len(numbers)} number(s) has no mapping")
    _same_layout(call, tensors)
    coeff: list[float] = []
    if kind == "Subtract":
        coeff = [1.0, -1.0]
    elif kind == "Average":
        coeff = [1.0 / len(tensors)] * len(tensors)
    out = b.add(call.name, "Eltwise", [t.blob for t in tensors], {"operation": _OPERATIONS[kind], "coeff": coeff})
    shape, channel_at, flattened = _broadcast(b, tensors)
    return b.tensor(out, shape, channel_at, flattened)


@keras_layer("Concatenate")
def concatenate(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    tensors = [t for t in _operands(call) if isinstance(t, Tensor)]
    _same_layout(call, tensors)
    first = tensors[0]
    axis = int(call.get("axis", -1)) % first.rank
    out = b.add(call.name, "Concat", [t.blob for t in tensors], {"axis": first.axis(axis)})
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in tensors)
    return b.tensor(out, tuple(shape), first.channel_at)
