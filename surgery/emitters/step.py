"""The streaming step model of a clip model: one frame and the recurrent state in, the
outputs and the new state out, so a live stream runs the backbone once per frame.

It is a second emit of the same IR, not a second model: :func:`step_net` rewrites a
copy of the clip net (sharing its weights) so that

- the input is one frame ``(N, C, H, W)`` and the per-frame layers are ordinary layers;
- the head reads a clip of one step, ``(N, 1, F)``;
- every recurrent layer takes its state as extra inputs ``<layer>.h0`` (and ``.c0``) and
  returns the new one as extra outputs ``<layer>.h`` (``.c``), batch first
  ``(N, layers*directions, H)``; start a stream with zeros.

Fed the frames of a clip one by one, it returns what the clip model returns for the
clip so far (a last-step head's scores; a per-step head's scores for this step).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

from surgery.emitters.onnx_model import emit_onnx
from surgery.emitters.torch_module import save_torch_folder
from surgery.errors import ShapeError, SpecError
from surgery.ir import Layer, Net
from surgery.layers import layer_type
from surgery.layers.recurrent import RecurrentType
from surgery.layers.time_fold import clip_input, has_time_axis

STATE_NAMES = ("h", "c")


def _refuse(layer: Layer, why: str) -> SpecError:
    return SpecError(
        f"layer {layer.name!r} ({layer.type}) {why}, so a streaming step model cannot run it",
        fix="use a unidirectional LSTM / GRU / RNN head (and per-step layers after it), or leave "
        "`step` out of the spec's output block",
        subject=layer.name,
    )


def check_streamable(net: Net) -> None:
    """Refuse, naming the layer, a clip model whose head needs the whole clip."""
    if not has_time_axis(net):
        raise SpecError("a streaming step model needs a clip model", fix="apply `sequence` to the image net first")
    for layer in _deploy_layers(net):
        kind = layer_type(layer.type)
        if layer.per_frame or layer.type == "Input":
            continue
        if getattr(kind, "needs_whole_clip", False):
            raise _refuse(layer, "pools over the whole clip")
        if getattr(kind, "recurrent", False) and layer.params["bidirectional"]:
            raise _refuse(layer, "is bidirectional (it reads the clip from its last frame back)")
        if getattr(kind, "recurrent", False) and len(layer.inputs) > 1:
            raise _refuse(layer, "already takes its state as an input")


def _deploy_layers(net: Net) -> list[Layer]:
    needed: set[str] = set()
    for blob in net.outputs_for(None):
        producer = net.producer(blob).name
        needed |= net.ancestors(producer) | {producer}
    return [layer for layer in net.layers() if layer.name in needed]


def _copy(layer: Layer, **changes: Any) -> Layer:
    fields: dict[str, Any] = dict(
        name=layer.name,
        type=layer.type,
        inputs=list(layer.inputs),
        outputs=list(layer.outputs),
        params=copy.deepcopy(layer.params),
        blobs={r: copy.copy(b) for r, b in layer.blobs.items()},
        phase=layer.phase,
        extra=dict(layer.extra),
    )
    fields.update(changes)
    return Layer(**fields)


def step_net(net: Net) -> Net:
    """The step model's net (weights shared with ``net``).

    Raises:
        SpecError: the head needs the whole clip (temporal pooling, a bidirectional
            recurrent layer), naming the layer.
        ShapeError: a head layer reads several steps at once (e.g. an InnerProduct
            flattening T), naming it.
    """
    check_streamable(net)
    clip = clip_input(net)
    clip_shape = net.known_shape(clip)
    batch = clip_shape[0]
    step = Net(f"{net.name}_step")
    one_step: dict[str, str] = {}  # per-frame blob -> its (N, 1, ...) view
    states: list[str] = []
    for layer in _deploy_layers(net):
        if layer.type == "Input" and layer.outputs[0] == clip:
            params = {k: v for k, v in layer.params.items() if k != "time_axis"}
            params["shape"] = (clip_shape[0], *clip_shape[2:])
            step.add_layer(_copy(layer, params=params))
            continue
        if layer.per_frame or layer.type == "Input":
            step.add_layer(_copy(layer))
            continue
        inputs = []
        for blob in layer.inputs:
            if blob not in one_step and (net.producer(blob).per_frame or blob == clip):
                one_step[blob] = _one_step_view(step, blob, net.known_shape(blob))
            inputs.append(one_step.get(blob, blob))
        new = _copy(layer, inputs=inputs)
        if getattr(layer_type(layer.type), "recurrent", False):
            states += _expose_state(step, new, batch)
        step.add_layer(new)
    # it reads the same frames, and keeps what the clip model carries about its heads
    blobs = {blob for layer in step.layers() for blob in layer.outputs}
    step.info = net.info.for_part(blobs, set(step.layer_names()), image_input=True)
    step.set_outputs(net.outputs_for(None) + states)
    try:
        step.shapes()
    except ShapeError as error:
        raise ShapeError(
            f"the head cannot run one step at a time: {error.message}",
            subject=error.subject,
            fix="a layer that reads several steps at once (an InnerProduct over T) needs the whole "
            "clip: use axis: 2 (per step) or a last-step recurrent layer before it",
        ) from None
    return step


def _one_step_view(step: Net, blob: str, shape: tuple[int, ...]) -> str:
    name = f"{blob}/one_step"
    step.add_layer(Layer(name, "Reshape", inputs=[blob], outputs=[name], params={"shape": [0, 1, *shape[2:]]}))
    return name


def _expose_state(step: Net, layer: Layer, batch: int) -> list[str]:
    """Add the layer's state inputs (zeros start a stream) and outputs; the output names."""
    kind = cast(RecurrentType, layer_type(layer.type))
    layer.params["state_batch_first"] = True
    shape = kind.state_shape(layer, batch)
    outputs = []
    for state in STATE_NAMES[: kind.states]:
        given = f"{layer.name}.{state}0"
        step.add_layer(Layer(given, "Input", outputs=[given], params={"shape": shape}))
        layer.inputs.append(given)
        layer.outputs.append(f"{layer.name}.{state}")
        outputs.append(f"{layer.name}.{state}")
    return outputs


def emit_step_onnx(net: Net, path: str | Path, **options: Any) -> Path:
    """Write the step model of clip model ``net`` as an ONNX file (see :func:`emit_onnx`)."""
    return emit_onnx(step_net(net), path, **options)


def save_step_torch(net: Net, folder: str | Path) -> Path:
    """Write the step model of clip model ``net`` as a standalone PyTorch folder."""
    return save_torch_folder(step_net(net), Path(folder))


__all__ = ["check_streamable", "emit_step_onnx", "save_step_torch", "step_net"]
