"""``sequence``: an image net into a clip model with a temporal head.

The input becomes a clip ``(N, T, C, H, W)``; every layer up to ``at`` is marked
per-frame (its blobs gain the time axis, ``(N, T, ...)``; the emitters fold T into the
batch around them); a per-frame feature map is flattened per frame to ``(N, T, F)``;
the head, written in Caffe syntax, reads that. Layers after ``at`` are dropped, as by
``cut``. T is the number of frames the model is built with and stays symbolic in the
ONNX file.
"""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError, SpecError
from surgery.ir import Layer, Net
from surgery.ops.base import ADDED, DROPPED, KEPT, Action, OpContext, register_op
from surgery.ops.newlayer import add_caffe_layers
from surgery.ops.selectors import place

HEAD_HINT = "start the head with an LSTM / GRU / RNN, a TemporalPooling, or an InnerProduct with axis: 2 (one per step)"


def _check(net: Net, op: Any) -> Layer:
    """The net's single image input layer."""
    inputs = net.input_layers()
    shapes = [tuple(layer.params["shape"]) for layer in inputs]
    if len(inputs) != 1 or len(shapes[0]) != 4:
        raise SpecError(
            f"sequence needs a net with a single image input (N, C, H, W); this one has "
            f"{len(inputs)} input(s) shaped {', '.join(map(str, shapes)) or 'nothing'}",
            fix="apply sequence to an image classifier (one 4-D input)",
            subject=op.at if op.HasField("at") else None,
        )
    if any(layer.per_frame for layer in net.layers()):
        raise SpecError("the net is already a clip model (sequence was applied before)")
    if not op.layer:
        raise SpecError(
            "sequence needs a temporal head: at least one `layer { }`",
            fix='e.g. layer { name: "lstm" type: "LSTM" recurrent_param { num_output: 64 return_sequences: false } }',
        )
    if op.frames < 1:
        raise SpecError("frames must be at least 1", subject=str(op.frames))
    return inputs[0]


def _cut(net: Net, op: Any) -> tuple[str, list[Action]]:
    """The per-frame features blob; layers after ``at`` dropped."""
    if not op.HasField("at"):
        outputs = net.outputs_for(None)
        if len(outputs) != 1:
            raise SpecError(
                f"the net has {len(outputs)} outputs ({', '.join(outputs)}); say which layer is the "
                "last one to run per frame",
                fix=f'add at: "{net.producer(outputs[0]).name}"',
            )
        return outputs[0], []
    at = place(net, op.at)
    if len(at.blobs) != 1:
        raise SpecError(f"{op.at!r} has {len(at.blobs)} outputs; the per-frame part must end in one", subject=op.at)
    dropped = net.prune_to(net.ancestors(at.layer) | {at.layer})
    return at.blobs[0], [Action("sequence", name, DROPPED, f"after the per-frame part (at {at})") for name in dropped]


def _flatten_frames(net: Net, features: str) -> tuple[str, list[Action]]:
    """Each frame's feature map as one vector, ``(N, T, F)``."""
    shape = net.known_shape(features)
    if len(shape) <= 3:
        return features, []
    name = f"{features}/frame_flatten"
    net.add_layer(
        Layer(name, "Flatten", inputs=[features], outputs=[name], params={"axis": 1, "end_axis": -1}, per_frame=True)
    )
    return name, [Action("sequence", name, ADDED, f"Flatten per frame: {shape} -> {net.shape(name)}")]


def _add_head(net: Net, op: Any, features: str, ctx: OpContext) -> list[tuple[Layer, list[str]]]:
    first, shape = op.layer[0].name, net.shape(features)
    try:
        return add_caffe_layers(net, list(op.layer), features, ctx.seed, per_frame=False)
    except ShapeError as error:
        if error.subject != first:
            raise
        raise ShapeError(
            f"the head's first layer {first!r} cannot take the per-frame features {shape} (N, T, F): {error.message}",
            fix=HEAD_HINT,
            subject=first,
        ) from None


@register_op("sequence")
def sequence(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Make ``net`` a clip model: per-frame image layers, then the temporal head."""
    data = _check(net, op)
    features, actions = _cut(net, op)
    net.set_outputs([features])
    image_shape = tuple(data.params["shape"])
    data.params = {**data.params, "shape": (image_shape[0], op.frames, *image_shape[1:]), "time_axis": 1}
    frame_layers = [layer for layer in net.layers() if layer.type != "Input"]
    for layer in frame_layers:
        layer.per_frame = True
    net.invalidate()
    net.shapes()
    actions.append(
        Action("sequence", data.name, KEPT, f"input {image_shape} -> clips {data.params['shape']} (T symbolic in ONNX)")
    )
    actions.append(
        Action(
            "sequence",
            features if features in net else net.producer(features).name,
            KEPT,
            f"{len(frame_layers)} layers run per frame; features {net.shape(features)}",
        )
    )
    features, flatten = _flatten_frames(net, features)
    actions += flatten
    added = _add_head(net, op, features, ctx)
    read = {blob for layer, _ in added for blob in layer.inputs}
    net.set_outputs([blob for layer, _ in added for blob in layer.outputs if blob not in read])
    net.shapes()
    return actions + [
        Action("sequence", layer.name, ADDED, "; ".join([f"{layer.type} (head)", *notes])) for layer, notes in added
    ]
