"""Index: basic tensor indexing (``x[:, 0]``, ``x[:, :c]``, ``x[..., ::2]``,
``x[:, :, None]``), as ViT's class-token pooling and many timm blocks write it (torch's
``operator.getitem`` with integers, slices, None and Ellipsis; ONNX's Slice followed by
Squeeze and Unsqueeze). Caffe has no such layer.

The index is kept as written, one item per position with Ellipsis expanded against the
input's rank, and resolved against the input's sizes only when shapes are computed
(Python's clamping of out-of-range bounds), so ``x[:, -1:]`` stays "the last one" at any
size. The batch axis is never indexed: the first item is a whole slice, and the layer
holds at any batch size. Indexing by a tensor (a gather) is not this layer.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from surgery.errors import ShapeError, unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx

#: ONNX Slice's "to the end" (any end past the axis is clamped to its size).
_TO_END = np.iinfo(np.int64).max
_WHOLE = [None, None, 1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(value: Any) -> bool:
    return value is None or _is_int(value)


def _item(value: Any) -> Any:
    """One index item as plain data: an int, ``[start, stop, step]`` or None (a new
    axis); ``...`` stays ``...`` for :func:`normalise_index`. A ValueError otherwise."""
    if value is None or value is Ellipsis or _is_int(value):
        return value
    if isinstance(value, slice) and _bound(value.start) and _bound(value.stop) and _bound(value.step):
        step = 1 if value.step is None else value.step
        if step > 0:
            return [value.start, value.stop, step]
    raise ValueError(f"index item {value!r} is not an int, a slice with a positive step, None or Ellipsis")


def normalise_index(index: Any, rank: int) -> list[Any] | None:
    """A traced ``getitem`` index as the layer's ``index`` param (Ellipsis expanded into
    whole slices for a ``rank``-D input), or None when this type cannot express it (a
    tensor, a negative step, more axes than the input has)."""
    raw = list(index) if isinstance(index, tuple) else [index]
    try:
        items = [_item(value) for value in raw]
    except ValueError:
        return None
    ellipses = [k for k, item in enumerate(items) if item is Ellipsis]
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if len(ellipses) > 1 or used > rank:
        return None
    if ellipses:
        k = ellipses[0]
        items[k : k + 1] = [list(_WHOLE) for _ in range(rank - used)]
    return items


def to_torch_index(items: list[Any]) -> tuple:
    """The ``index`` param as the tuple torch indexes with."""
    return tuple(slice(*item) if isinstance(item, list) else item for item in items)


def _whole(item: Any) -> bool:
    return isinstance(item, list) and item[0] in (None, 0) and item[1] is None and item[2] == 1


def _walk(layer: Layer, shape: Shape) -> list[tuple[Any, int]]:
    """``(item, input axis)`` for every item, trailing whole axes added (a new axis has the
    input axis it stands before). A ShapeError naming the layer for an index that does not
    fit the input or touches the batch axis."""
    items = layer.params.get("index")
    if not isinstance(items, list) or not items:
        raise ShapeError(f"index {items!r} must be a non-empty list", subject=layer.name)
    if not _whole(items[0]):
        raise ShapeError(
            f"index {items!r} indexes the batch axis (axis 0)",
            subject=layer.name,
            fix="keep the first item a whole slice, so the layer holds at any batch size",
        )
    walked, axis = [], 0
    for item in items:
        if item is None:
            walked.append((None, axis))
            continue
        if axis >= len(shape):
            raise ShapeError(
                f"index {items!r} has more items than the {len(shape)}-D input {shape} has axes", subject=layer.name
            )
        if _is_int(item):
            if not -shape[axis] <= item < shape[axis]:
                raise ShapeError(
                    f"index {item} is out of range for axis {axis} of size {shape[axis]}", subject=layer.name
                )
        elif not (
            isinstance(item, list)
            and len(item) == 3
            and _bound(item[0])
            and _bound(item[1])
            and _is_int(item[2])
            and item[2] > 0
        ):
            raise ShapeError(f"index item {item!r} is not an int, [start, stop, step > 0] or None", subject=layer.name)
        walked.append((item, axis))
        axis += 1
    return walked + [(list(_WHOLE), rest) for rest in range(axis, len(shape))]


def _output_shape(layer: Layer, shape: Shape) -> tuple[int, ...]:
    out = []
    for item, axis in _walk(layer, shape):
        if item is None:
            out.append(1)
        elif isinstance(item, list):  # Python's clamping of out-of-range bounds, as torch's
            out.append(len(range(*slice(*item).indices(shape[axis]))))
    return tuple(out)


def _gather_from_onnx(node: Any, reader: Any, kind: str) -> Layer | None:
    """ONNX's Gather by a constant scalar index (the axis goes, as ``x[:, 0]``) or by a
    one-element index (the axis stays, as ``x[:, 0:1]``), on an axis other than the
    batch. A gather by a computed index (an embedding lookup) is not this layer."""
    index = reader.const(node.input[1]) if len(node.input) > 1 else None
    if index is None or index.size != 1:
        return None
    source = reader.blob_or_const(node.input[0], node)
    rank = len(reader.shape(source))
    axis = int(reader.attrs(node).get("axis", 0))
    axis = axis % rank if -rank <= axis < rank else 0
    if axis == 0:
        return None
    at = int(index.reshape(()))
    item: Any = at if index.ndim == 0 else [at, None if at == -1 else at + 1, 1]
    items: list[Any] = [list(_WHOLE) for _ in range(axis)] + [item]
    return reader.layer(node, kind, {"index": items}, inputs=[source])


@register_layer
class Index(LayerType):
    """Params: index, one item per position: an int (the axis goes), ``[start, stop,
    step]`` (start/stop may be None, step > 0) or None (a new axis of size 1). Axes past
    the last item are kept whole."""

    name = "Index"
    caffe_syntax = False
    torch_functions = (operator.getitem,)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if not isinstance(shape, tuple):
            raise ShapeError("expects a tensor input", subject=layer.name)
        return [_output_shape(layer, shape)]

    # -------------------------------------------------------------- torch
    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(operator.getitem, (inputs[0], to_torch_index(layer.params["index"])))

    def import_torch_call_shaped(
        self, target: Any, args: tuple, kwargs: dict, in_shapes: list[Shape | None]
    ) -> tuple[dict[str, Any] | None, Any]:
        """``x[index]`` on one float tensor (a tuple shape; a typed or non-tensor value and an
        index holding a tensor, which the importer passes as a second input, stay calls).
        An index leaving an empty axis stays a call too."""
        if kwargs or len(args) != 2 or args[0] is not None or len(in_shapes) != 1 or type(in_shapes[0]) is not tuple:
            return None, None
        items = normalise_index(args[1], len(in_shapes[0]))
        if items is None:
            return None, None
        params = {"index": items}
        try:
            shape = _output_shape(Layer("index", self.name, params=params), in_shapes[0])
        except ShapeError:
            return None, None
        return (params, None) if all(shape) else (None, None)

    # --------------------------------------------------------------- onnx
    def to_onnx(self, layer: Layer, writer: Any) -> None:
        walked = _walk(layer, writer.in_shapes(layer)[0])
        starts, ends, axes, steps, squeezed, inserted = [], [], [], [], [], []
        out_axis = 0
        for item, axis in walked:
            if item is None:
                inserted.append(out_axis)
            elif _is_int(item):  # one element, then the axis goes
                starts.append(item)
                ends.append(item + 1 if item != -1 else _TO_END)
                axes.append(axis)
                steps.append(1)
                squeezed.append(axis)
                continue
            elif not _whole(item):
                start, stop, step = item
                starts.append(0 if start is None else start)
                ends.append(_TO_END if stop is None else stop)
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        wanted: list[tuple[str, list[list[int]], tuple[str, ...]] | None] = [
            ("Slice", [starts, ends, axes, steps], ("starts", "ends", "axes", "steps")) if axes else None,
            ("Squeeze", [squeezed], ("squeezed",)) if squeezed else None,
            ("Unsqueeze", [inserted], ("inserted",)) if inserted else None,
        ]
        stages = [stage for stage in wanted if stage is not None] or [("Identity", [], ())]
        current = layer.inputs[0]
        for k, (op, values, roles) in enumerate(stages):
            last = k == len(stages) - 1
            consts = [
                writer.const(f"{layer.name}.{role}", np.array(v, dtype=np.int64)) for role, v in zip(roles, values)
            ]
            output = layer.outputs[0] if last else f"{layer.name}/{op.lower()}"
            writer.node(op, [current, *consts], [output], layer.name if last else f"{layer.name}/{op.lower()}")
            current = output

    onnx_ops = ("Slice", "Gather")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        """A Slice with constant starts, ends, axes and positive steps that leaves the batch
        axis whole (the Squeeze / Unsqueeze after it are read on their own); a Gather of
        one constant index off the batch axis (``x[:, 0]``, the class token)."""
        if node.op_type == "Gather":
            return _gather_from_onnx(node, reader, self.name)
        attrs = reader.attrs(node)
        if "starts" in attrs:  # before opset 10: attributes
            starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        else:
            names = (list(node.input) + [""] * 4)[1:5]
            values = [reader.const_list(name) if name else None for name in names]
            if any(value is None and (name or k < 2) for k, (name, value) in enumerate(zip(names, values))):
                return None  # bounds computed at run time
            starts, ends, axes, steps = values
        source = reader.blob_or_const(node.input[0], node)
        rank = len(reader.shape(source))
        axes = list(range(len(starts))) if axes is None else [int(a) % rank if -rank <= a < rank else -1 for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        if (
            not len(starts) == len(ends) == len(axes) == len(steps)
            or -1 in axes
            or len(set(axes)) != len(axes)
            or min(steps, default=1) < 1
        ):
            return None  # a negative step or an axis twice: not this layer
        items: list[Any] = [list(_WHOLE) for _ in range(max(axes, default=0) + 1)]
        for axis, start, end, step in zip(axes, starts, ends, steps):
            items[axis] = [int(start), None if end >= _TO_END // 2 else int(end), step]
        if not _whole(items[0]):
            return None  # the batch axis sliced
        return reader.layer(node, self.name, {"index": items}, inputs=[source])

    # -------------------------------------------------------------- caffe
    def to_caffe(self, layer: Layer, writer: Any) -> None:
        raise unsupported_in_caffe(layer, "Caffe has no layer that indexes a tensor")
