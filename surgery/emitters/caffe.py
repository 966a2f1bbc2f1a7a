"""Caffe emitter: the IR written back as a deploy ``prototxt`` and a ``caffemodel``,
for users still deploying on Caffe or OpenCV's dnn module.

Each layer type writes its own ``LayerParameter`` (``to_caffe`` in its file). A layer
Caffe cannot express (a broadcasting elementwise product, an opaque torch call) is a
clear error naming it. Train-only branches are left out, as in Caffe's deploy files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from surgery.emitters.files import FileLog, write_bytes
from surgery.errors import unsupported_in_caffe
from surgery.ir import Layer, Net
from surgery.layers import layer_type
from surgery.lazy_torch import torch
from surgery.spec.schema import caffe_class


class CaffeWriter:
    """What a layer type's ``to_caffe`` hook writes into."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.shapes = net.shapes()
        self.message = caffe_class("NetParameter")()
        self.message.name = net.name

    def layer(
        self,
        layer: Layer,
        type_name: str,
        *,
        name: str | None = None,
        bottom: list[str] | None = None,
        top: list[str] | None = None,
    ) -> Any:
        """A new LayerParameter (defaults: the layer's name, inputs and outputs)."""
        message = self.message.layer.add()
        message.name = name or layer.name
        message.type = type_name
        message.bottom.extend(layer.inputs if bottom is None else bottom)
        message.top.extend(layer.outputs if top is None else top)
        return message

    def blob(self, message: Any, tensor: torch.Tensor, lr_mult: float = 1.0, decay_mult: float = 1.0) -> None:
        """Append a weight blob (and its param { lr_mult decay_mult })."""
        proto = message.blobs.add()
        array = tensor.detach().cpu().to(torch.float32).contiguous().numpy()
        proto.shape.dim.extend(array.shape)
        proto.data.extend(array.reshape(-1).tolist())
        spec = message.param.add()
        spec.lr_mult, spec.decay_mult = lr_mult, decay_mult

    def blobs(self, message: Any, layer: Layer, roles: tuple[str, ...]) -> None:
        for role in roles:
            if role in layer.blobs:
                blob = layer.blobs[role]
                self.blob(message, blob.data, blob.lr_mult, blob.decay_mult)

    def in_shapes(self, layer: Layer) -> list[Any]:
        return [self.shapes[b] for b in layer.inputs]


def build_net_parameter(net: Net) -> Any:
    """The deploy NetParameter of ``net``, weights included."""
    clip_layer = next((layer for layer in net.layers() if layer.per_frame), None)
    if clip_layer is not None:  # Caffe's LSTM is time-major with a `cont` input: not written
        raise unsupported_in_caffe(
            clip_layer,
            "a clip model (per-frame layers and a temporal head) has no Caffe form "
            "here; emit PyTorch / ONNX, or Caffe from the image net before `sequence`",
        )
    writer = CaffeWriter(net)
    needed: set[str] = set()
    for blob in net.outputs_for(None):
        producer = net.producer(blob).name
        needed |= net.ancestors(producer) | {producer}
    for layer in net.layers():
        if layer.name in needed:
            layer_type(layer.type).to_caffe(layer, writer)
    return writer.message


def emit_caffe(net: Net, prototxt: str | Path, weights: str | Path, log: FileLog | None = None) -> tuple[Path, Path]:
    """Write ``net`` as a deploy prototxt (no weights in it) and a caffemodel, each
    atomically (``log`` records their sha256 and sizes).

    Example:
        >>> emit_caffe(net, "out/deploy.prototxt", "out/weights.caffemodel")
    """
    message = build_net_parameter(net)
    structure = caffe_class("NetParameter")()
    structure.CopyFrom(message)
    for layer in structure.layer:
        del layer.blobs[:]
    prototxt, weights = Path(prototxt), Path(weights)
    write_bytes(prototxt, text_format.MessageToString(structure).encode(), log)
    write_bytes(weights, message.SerializeToString(), log)
    return prototxt, weights


__all__ = ["CaffeWriter", "build_net_parameter", "emit_caffe", "unsupported_in_caffe"]
