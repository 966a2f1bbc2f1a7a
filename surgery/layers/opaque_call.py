"""OpaqueCall: a traced function or method call surgery has no layer type for
(``x.view(n, -1)``, ``torch.unsqueeze``...). Kept as the same call in the emitted model."""

from __future__ import annotations

from typing import Any

from torch import fx

from surgery.ir import Layer, Shape
from surgery.layers.meta_run import run_on_meta
from surgery.layers.registry import LayerType, register_layer


class InputRef:
    """Stands in the recorded arguments for input blob number ``index``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"InputRef({self.index})"


def substitute(structure: Any, values: list[Any]) -> Any:
    """``structure`` with every :class:`InputRef` replaced by ``values[ref.index]``."""
    if isinstance(structure, InputRef):
        return values[structure.index]
    if isinstance(structure, (list, tuple)):
        items = [substitute(item, values) for item in structure]
        return type(structure)(items) if not hasattr(structure, "_fields") else type(structure)(*items)
    if isinstance(structure, dict):
        return {key: substitute(item, values) for key, item in structure.items()}
    if isinstance(structure, slice):
        return slice(*(substitute(v, values) for v in (structure.start, structure.stop, structure.step)))
    return structure


@register_layer
class OpaqueCall(LayerType):
    """``extra``: ``kind`` ("call_function" or "call_method"), ``target`` (the callable
    or method name), ``args`` and ``kwargs`` with :class:`InputRef` where inputs go.
    Its inputs may be non-tensor values (sizes); their "shape" is the value itself."""

    name = "OpaqueCall"

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
        args, kwargs = substitute(extra["args"], inputs), substitute(extra["kwargs"], inputs)
        return graph.create_node(extra["kind"], extra["target"], tuple(args), kwargs)
