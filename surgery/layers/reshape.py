"""Reshape to a fixed shape (ONNX semantics: 0 copies the input's axis, -1 is inferred)."""

from __future__ import annotations

import math
from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.meta_run import TracedShapes
from surgery.layers.registry import LayerType, check_param, known, register_layer
from surgery.lazy_torch import fx


def resolve_shape(target: list[int], shape: Shape) -> tuple[int, ...]:
    """The concrete shape ``target`` means for an input of ``shape``."""
    out = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise ShapeError(f"shape {target} has more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or math.prod(shape) % known:
            raise ShapeError(f"cannot reshape {shape} to {target}")
        out[out.index(-1)] = math.prod(shape) // known
    if math.prod(out) != math.prod(shape):
        raise ShapeError(f"cannot reshape {shape} ({math.prod(shape)} values) to {target}")
    return tuple(out)


def _is_size(value: Any) -> bool:
    """A reshape argument: a size, a computed size (None here), or a tuple of them."""
    if isinstance(value, (tuple, list)):
        return all(_is_size(item) for item in value)
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)


def _squeeze_from_onnx(node: Any, reader: Any, kind: str) -> Layer | None:
    """ONNX's Squeeze / Unsqueeze with constant axes (an attribute before opset 13, an
    input from 13) as a Reshape; the batch axis, when kept in place, stays dynamic. A
    Squeeze without axes (every axis of size 1, the batch too at batch 1) is not read."""
    axes = reader.attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = reader.const_list(node.input[1])
    if not axes:
        return None
    source = reader.blob(node.input[0])
    shape = list(reader.shape(source))
    if node.op_type == "Squeeze":
        axes = {int(a) % len(shape) for a in axes}
        if any(shape[a] != 1 for a in axes):
            return None
        out = [d for i, d in enumerate(shape) if i not in axes]
    else:
        rank = len(shape) + len(axes)
        axes = sorted(int(a) % rank for a in axes)
        out = list(shape)
        for axis in axes:
            out.insert(axis, 1)
    if 0 not in axes and out and shape and out[0] == shape[0] == reader.batch:
        out[0] = 0  # the batch axis, in place: dynamic
    return reader.layer(node, kind, {"shape": out}, inputs=[source])


@register_layer
class Reshape(LayerType):
    """Params: shape (0 = copy that input axis, -1 = infer; keep the batch axis as 0)."""

    name = "Reshape"
    onnx_ops = ("Reshape", "Squeeze", "Unsqueeze")
    torch_functions = ("torch.reshape", "reshape", "view", "torch.unsqueeze", "unsqueeze", "torch.squeeze", "squeeze")
    reads_traced_shapes = True

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        return [resolve_shape(list(layer.params["shape"]), known(layer, in_shapes))]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        target = list(layer.params["shape"])
        if target and target[0] == 0:  # keep the batch axis dynamic
            size = graph.call_method("size", (inputs[0], 0))
            args = [size, *[known(layer, in_shapes)[i] if d == 0 else d for i, d in enumerate(target) if i > 0]]
        else:
            args = [known(layer, in_shapes)[i] if d == 0 else d for i, d in enumerate(target)]
        return graph.call_method("reshape", (inputs[0], *args))

    def import_torch_call_traced(
        self, target: Any, args: tuple, kwargs: dict, traced: TracedShapes
    ) -> dict[str, Any] | None:
        """``x.view(n, -1)``, ``x.reshape((n, c, h * w))``, ``torch.reshape(x, shape)``,
        ``unsqueeze`` / ``squeeze``: the target is read off the traced output shape at two
        batch sizes. An axis of the same size at both is that size, whatever expression
        computed it; the batch axis kept in place is 0 (copy); one other axis that follows
        the batch (``n * windows``) is -1."""
        if any(not _is_size(a) for a in (*args[1:], *kwargs.values())):
            return None  # view(dtype), a float: not a reshape
        source, alternate_source = traced.inputs[0], traced.alternate_inputs[0]
        here, there = traced.output, traced.alternate_output
        if not _is_shape(source) or not _is_shape(here) or not _is_shape(there) or len(here) != len(there):
            return None
        shape = []
        for axis, (size, alternate) in enumerate(zip(here, there)):
            if size == alternate:
                shape.append(size)
            elif axis == 0 and _is_shape(alternate_source) and (source[0], alternate_source[0]) == (size, alternate):
                shape.append(0)
            else:
                shape.append(-1)
        if 0 in here or shape.count(-1) > 1:
            return None  # an empty axis reads as "copy"; two axes cannot both be inferred
        return {"shape": shape}

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        shape = writer.const(f"{layer.name}.shape", np.array(layer.params["shape"], dtype=np.int64))
        writer.node("Reshape", [layer.inputs[0], shape], list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if node.op_type != "Reshape":
            return _squeeze_from_onnx(node, reader, self.name)
        target = reader.const_list(node.input[1])
        if target is None or (reader.attrs(node).get("allowzero", 0) and 0 in target):
            return None  # allowzero makes 0 a literal empty axis
        source = reader.blob(node.input[0])
        target = [int(d) for d in target]
        batch = reader.shape(source)[0]
        if target and batch == reader.batch and target[0] in (batch, reader.file_batch):
            # the exporter baked its batch size in (the file's, which the net may be built
            # at another batch than): keep the batch axis dynamic
            target[0] = 0
        return reader.layer(node, self.name, {"shape": target}, inputs=[source])

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        writer.layer(layer, "Reshape").reshape_param.shape.dim.extend(layer.params["shape"])

    caffe_param_field = "reshape_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        check_param(
            param.HasField("shape") and len(param.shape.dim) > 0,
            "needs reshape_param { shape { dim ... } }",
            fix="e.g. reshape_param { shape { dim: 0 dim: -1 } } (0 copies an axis, -1 is inferred)",
        )
        check_param(
            param.axis == 0 and param.num_axes == -1,
            "reshape_param axis / num_axes are not supported",
            fix="write the whole target shape, with 0 for axes to keep",
        )
        dims = [int(d) for d in param.shape.dim]
        check_param(
            all(d >= -1 for d in dims) and dims.count(-1) <= 1,
            f"shape {dims}: each dim is a size, 0 (copy the input's axis) or one -1 (inferred)",
        )
        return {"shape": dims}
