"""New layers from a spec: Caffe `layer { }` messages added to the net with seeded blobs."""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Layer, Net
from surgery.layers.new_blobs import init_new_blobs
from surgery.ops.selectors import place


def resolve_bottom(net: Net, name: str) -> str:
    """A blob name; a layer name with one output, or a module path (see
    :func:`~surgery.ops.selectors.place`), stands for that output."""
    if net.has_blob(name):
        return name
    found = place(net, name, blobs=True)
    if len(found.blobs) != 1:
        raise SpecError(
            f"layer {name!r} has {len(found.blobs)} outputs; a bottom names one blob",
            fix="name one of " + ", ".join(repr(b) for b in found.blobs),
            subject=name,
        )
    return found.blobs[0]


def _phase(message: Any, producers: list[Layer]) -> str | None:
    """``"train"`` for a layer the spec writes with ``include { phase: TRAIN }`` (Caffe's
    train-only branch: in the train-mode model, left out of the deploy ONNX), or one that
    reads a train-only layer; None otherwise. A TEST-only layer has no place in a spec."""
    phases = {rule.phase for rule in message.include if rule.HasField("phase")}
    if message.exclude or phases - {0}:
        raise SpecError(
            f"layer {message.name!r}: a spec's new layer may be train-only (include {{ phase: TRAIN }}), nothing else",
            subject=message.name,
            fix="remove the exclude / TEST rule (the deploy model is every layer that is not train-only)",
        )
    if phases or any(producer.phase == "train" for producer in producers):
        return "train"
    return None


def add_caffe_layers(
    net: Net, messages: list, first_bottom: str, seed: int, allow_zero: bool = False, per_frame: bool | None = None
) -> list[tuple[Layer, list[str]]]:
    """Add layers written in Caffe syntax as a chain: a layer without ``bottom`` reads the
    previous layer's top (the first one reads ``first_bottom``); a layer without ``top``
    writes a blob named after itself. In a clip model a layer reading only per-frame blobs
    runs per frame too, unless ``per_frame`` says otherwise. Returns each layer with its
    blob-init notes."""
    from surgery.importers.caffe_layer import layer_from_caffe

    added = []
    previous = first_bottom
    for message in messages:
        parsed = layer_from_caffe(message)
        layer = parsed.layer
        if layer.type == "Input":
            raise SpecError(
                f"layer {layer.name!r}: a spec adds layers that compute; an Input is the source's",
                subject=layer.name,
                fix="set the source's input_shape instead",
            )
        layer.inputs = [resolve_bottom(net, b) for b in layer.inputs] or [previous]
        layer.outputs = layer.outputs or [layer.name]
        layer.phase = _phase(message, [net.producer(blob) for blob in layer.inputs])
        layer.per_frame = all(net.producer(blob).per_frame for blob in layer.inputs) if per_frame is None else per_frame
        net.add_layer(layer)
        net.ensure_shapes()  # a new layer that does not fit its input fails here, by name
        notes = init_new_blobs(net, layer, seed, parsed.fillers, parsed.param_specs, allow_zero)
        net.ensure_shapes()
        added.append((layer, notes))
        previous = layer.outputs[0]
    return added
