"""A clip model split at its freeze boundary: the frozen per-frame backbone and the head.

When every per-frame layer is frozen, the backbone's output for a clip never changes
while the head trains, so it can be computed once per clip and cached: the backbone is
emitted as an image net (one frame in, the per-frame features out) and the head as a net
whose input is the features ``(N, T, F)``. Training the head on cached features gives
the same loss and gradients as training the whole clip model.
"""

from __future__ import annotations

import copy

from surgery.errors import SpecError
from surgery.ir import Layer, Net
from surgery.layers.time_fold import has_time_axis, without_time


def feature_blob(net: Net) -> str:
    """The one per-frame blob the head reads."""
    if not has_time_axis(net):
        raise SpecError("splitting at the freeze boundary needs a clip model", fix="apply `sequence` first")
    read = {
        blob
        for layer in net.layers()
        if not layer.per_frame and layer.type != "Input"
        for blob in layer.inputs
        if net.producer(blob).per_frame
    }
    if len(read) != 1:
        raise SpecError(f"the head reads {len(read)} per-frame blobs ({', '.join(sorted(read))}); the split needs one")
    return read.pop()


def check_frozen(net: Net) -> None:
    """Refuse, naming it, a per-frame layer that still trains."""
    for layer in net.layers():
        if layer.per_frame and any(not blob.frozen for blob in layer.blobs.values()):
            raise SpecError(
                f"per-frame layer {layer.name!r} still trains, so its features cannot be cached",
                fix='freeze the backbone: edit { lr { up_to: "..." lr_mult: 0 } }',
                subject=layer.name,
            )


def backbone_net(net: Net) -> Net:
    """The frozen per-frame part as an image net: ``(N, C, H, W)`` -> features ``(N, F)``."""
    check_frozen(net)
    features = feature_blob(net)
    image = without_time(net)
    producer = image.producer(features).name
    image.prune_to(image.ancestors(producer) | {producer})
    image.set_outputs([features])
    image.name = f"{net.name}_backbone"
    image.preprocess = net.preprocess  # the frames it reads are the clip model's
    return image


def head_net(net: Net) -> Net:
    """The head alone: input the features ``(N, T, F)`` (named after the feature blob; T
    symbolic in ONNX)."""
    features = feature_blob(net)
    head = Net(f"{net.name}_head")
    params = {"shape": net.shape(features), "time_axis": 1}
    head.add_layer(Layer(features, "Input", outputs=[features], params=params))
    for layer in net.layers():
        if layer.per_frame or layer.type == "Input":
            continue
        head.add_layer(
            Layer(
                layer.name,
                layer.type,
                inputs=list(layer.inputs),
                outputs=list(layer.outputs),
                params=copy.deepcopy(layer.params),
                blobs={role: copy.copy(blob) for role, blob in layer.blobs.items()},
                phase=layer.phase,
                extra=dict(layer.extra),
            )
        )
    head.set_outputs(net.outputs)
    head.info = net.info.for_part(_blobs(head), set(head.layer_names()), image_input=False)  # solver too
    head.shapes()
    return head


def _blobs(net: Net) -> set[str]:
    return {blob for layer in net.layers() for blob in layer.outputs}


__all__ = ["backbone_net", "check_frozen", "feature_blob", "head_net"]
