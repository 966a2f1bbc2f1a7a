"""Opaque: a torch module surgery has no layer type for. It carries the module and its
weights through the surgery untouched, and still emits to torch."""

from __future__ import annotations

import itertools
from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.meta_run import run_on_meta
from surgery.layers.opaque_call import substitute
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx, nn, torch


@register_layer
class Opaque(LayerType):
    """``extra["module"]`` is the module; its parameters and buffers are the blobs (by
    their names inside the module). Shapes are inferred by running it on the meta device."""

    name = "Opaque"
    caffe_syntax = False

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        module: nn.Module = layer.extra["module"]
        # A second call of a module holds no blobs (the first caller owns them): the
        # module's own tensors give the shapes, so nothing runs on real weights.
        own = itertools.chain(module.named_parameters(), module.named_buffers())
        state = {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in own if t is not None}
        state |= {name: torch.empty(blob.shape, dtype=blob.dtype, device="meta") for name, blob in layer.blobs.items()}
        return run_on_meta(
            lambda *xs: torch.func.functional_call(module, state, *_arguments(layer, list(xs))),
            layer,
            in_shapes,
            len(layer.outputs),
        )

    def trainable_roles(self, layer: Layer) -> tuple[str, ...]:
        return tuple(name for name, _ in layer.extra["module"].named_parameters())

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        target = layer.extra.get("module_path", layer.name)
        return graph.call_module(target, *_arguments(layer, inputs))

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        # Surgery does not model it: the writer exports it with torch's own exporter.
        writer.traced(layer)


def _arguments(layer: Layer, inputs: list[Any]) -> tuple[tuple, dict]:
    """The module call's arguments: the recorded ones (``extra["args"]`` / ``["kwargs"]``,
    inputs standing as :class:`InputRef`) with ``inputs`` put in, else the inputs in order."""
    args = substitute(layer.extra["args"], inputs) if "args" in layer.extra else tuple(inputs)
    return tuple(args), substitute(layer.extra.get("kwargs", {}), inputs)
