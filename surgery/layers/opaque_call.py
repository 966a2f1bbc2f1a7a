"""OpaqueCall: a traced function or method call surgery has no layer type for
(``x.view(n, -1)``, ``torch.unsqueeze``...). Kept as the same call in the emitted model."""

from __future__ import annotations

import operator
from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.meta_run import run_on_meta
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx


class InputRef:
    """Stands in the recorded arguments for input blob number ``index``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"InputRef({self.index})"


class _Training:
    """Stands in the recorded arguments for the model's ``self.training`` flag."""

    def __repr__(self) -> str:
        return "TRAINING"

    def __reduce__(self) -> str:
        return "TRAINING"  # one instance, also after copy and pickle


TRAINING = _Training()


class TrainOnly:
    """Stands in the recorded arguments for a number the model passes only while
    training, 0 in eval (timm's ``dropout_p=self.attn_drop.p if self.training else 0.``):
    ``value * self.training`` in the emitted model."""

    def __init__(self, value: int | float) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"TrainOnly({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainOnly) and type(other.value) is type(self.value) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("TrainOnly", self.value))

    def pick(self, training: Any) -> Any:
        """The value for ``training``: a bool, or the emitted module's ``self.training`` node."""
        if isinstance(training, fx.Node):
            return training.graph.call_function(operator.mul, (training, self.value))
        return self.value if training else type(self.value)(0)


def substitute(structure: Any, values: list[Any], training: Any = False) -> Any:
    """``structure`` with every :class:`InputRef` replaced by ``values[ref.index]`` and
    :data:`TRAINING` by ``training`` (False for shape inference, the emitted module's
    ``self.training`` in generated code), a :class:`TrainOnly` by its value in that mode."""
    if isinstance(structure, InputRef):
        return values[structure.index]
    if structure is TRAINING:
        return training
    if isinstance(structure, TrainOnly):
        return structure.pick(training)
    if isinstance(structure, (list, tuple)):
        items = [substitute(item, values, training) for item in structure]
        if isinstance(structure, list):
            # a plain list, never torch.fx's immutable_list: the callee may change it in place
            # (torchvision's Swin3D _get_window_and_shift_size does), as it may in eager mode
            return items
        return type(structure)(items) if not hasattr(structure, "_fields") else type(structure)(*items)
    if isinstance(structure, dict):
        return {key: substitute(item, values, training) for key, item in structure.items()}
    if isinstance(structure, slice):
        return slice(*(substitute(v, values, training) for v in (structure.start, structure.stop, structure.step)))
    return structure


@register_layer
class OpaqueCall(LayerType):
    """``extra``: ``kind`` ("call_function" or "call_method"), ``target`` (the callable
    or method name), ``args`` and ``kwargs`` with :class:`InputRef` where inputs go.
    Its inputs may be non-tensor values (sizes); their "shape" is the value itself."""

    name = "OpaqueCall"
    caffe_syntax = False

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        extra = layer.extra

        def call(*xs: Any) -> Any:
            args, kwargs = substitute(extra["args"], list(xs)), substitute(extra["kwargs"], list(xs))
            if extra["kind"] == "call_method":
                return getattr(args[0], extra["target"])(*args[1:], **kwargs)
            return extra["target"](*args, **kwargs)

        return run_on_meta(call, layer, in_shapes, len(layer.outputs))

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        extra = layer.extra
        mode = _training_node(graph) if _uses_training(extra) else False
        args, kwargs = substitute(extra["args"], inputs, mode), substitute(extra["kwargs"], inputs, mode)
        return graph.create_node(extra["kind"], extra["target"], tuple(args), kwargs)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        # Surgery does not model it: the writer exports it with torch's own exporter.
        writer.traced(layer)


def _uses_training(extra: dict) -> bool:
    found: list[bool] = []

    def walk(value: Any) -> None:
        if value is TRAINING or isinstance(value, TrainOnly):
            found.append(True)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk((extra["args"], extra["kwargs"]))
    return bool(found)


def _training_node(graph: fx.Graph) -> fx.Node:
    """``self.training`` of the module the graph becomes."""
    return graph.get_attr("training")
