"""Score a video, frame by frame, with a clip model's streaming step model: each decoded
frame is preprocessed as the source says, runs the backbone once, and advances the
recurrent state; the scores after frame ``t`` are what the clip model gives for the clip
of frames ``1..t``."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import SurgeryError
from surgery.interrupts import checkpoint
from surgery.ir import Net
from surgery.video.decode import FrameConverter, open_source
from surgery.video.feature_cache import clip_net


@dataclass
class StreamRun:
    """What a stream did: frames scored, wall time (decode + preprocess + step), the
    step model's share of it, the last frame's scores, and the provider that ran."""

    frames: int
    seconds: float
    step_seconds: float
    scores: np.ndarray
    runtime: str
    #: why decoding stopped before the end (a truncated or damaged file), else None
    stopped: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        step_fps = self.frames / self.step_seconds if self.step_seconds > 0 else 0.0
        return (
            f"{self.frames} frames in {self.seconds:.2f} s: {self.fps:.1f} frames/s sustained "
            f"(the step model alone {step_fps:.1f} frames/s; {self.runtime})"
        )


class _TorchStep:
    def __init__(self, step: Net, device: str) -> None:
        import torch

        from surgery.emitters.torch_module import emit_torch
        from surgery.verify import torch_device

        self.torch = torch
        self.device = torch_device(device, "stream")
        self.module = emit_torch(step).eval().to(self.device)
        self.outputs = list(step.outputs)
        self.label = f"PyTorch on {self.device}"

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self.torch.no_grad():
            result = self.module(*(self.torch.from_numpy(x).to(self.device) for x in inputs))
        if isinstance(result, dict):
            result = [result[name] for name in self.outputs]
        elif not isinstance(result, (list, tuple)):
            result = [result]
        return [value.float().cpu().numpy() for value in result]


class _OnnxStep:
    def __init__(self, step: Net) -> None:
        from surgery.emitters.onnx_model import emit_onnx
        from surgery.verify import onnx_session, provider_label

        self._folder = tempfile.TemporaryDirectory(prefix="surgery-stream-")
        path = emit_onnx(step, Path(self._folder.name) / "step.onnx")
        self.session = onnx_session(path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.label = f"onnxruntime {provider_label(self.session)}"

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.outputs, dict(zip(self.inputs, inputs))))


def stream(
    model: str | Path | Net,
    source: str,
    *,
    use_onnx: bool = False,
    weights: str | Path | dict | None = None,
    limit: int | None = None,
    device: str = "cpu",
    on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> StreamRun:
    """Run the step model of clip model ``model`` (a spec file or a clip-model net) over
    ``source`` (a video file, or a camera number: /dev/videoN) frame by frame.

    Args:
        use_onnx: run the step model's ONNX through onnxruntime (the CUDA provider when
            it really starts), instead of PyTorch.
        weights: trained values (a state_dict, or its file) of the emitted clip model or
            of its head (``surgery.split``): they replace the spec's, by parameter name.
        limit: stop after this many frames (a camera never ends).
        on_frame: ``on_frame(index, scores)`` after each frame (index from 1).

    Returns:
        A :class:`StreamRun` with the frame rate and the last frame's scores.
    """
    from surgery.emitters.step import step_net

    net = clip_net(model)
    step = step_net(net)
    if weights is not None:
        load_trained(step, weights)
    if step.preprocess is None:
        raise SurgeryError("the clip model's input is not an image, so video frames cannot feed it")
    frame_layer, *state_layers = step.input_layers()
    shape = tuple(frame_layer.params["shape"])
    convert = FrameConverter(step.preprocess, (int(shape[2]), int(shape[3])))
    run_step: Any = _OnnxStep(step) if use_onnx else _TorchStep(step, device)
    states = [np.zeros(tuple(layer.params["shape"]), np.float32) for layer in state_layers]
    state_count = len(states)
    frames, step_seconds, scores = 0, 0.0, np.zeros(0, np.float32)
    failure: list[str] = []
    start = time.perf_counter()
    container = open_source(source)
    try:
        if not container.streams.video:
            raise SurgeryError(f"{source!r} has no video stream")
        video = container.streams.video[0]  # one decoding thread: the cores are the step model's
        for frame in _frames(container, video, source, failure):
            checkpoint()
            image = np.broadcast_to(convert(frame), shape).astype(np.float32)  # batch of 1 (or the net's N)
            began = time.perf_counter()
            outputs = run_step([image, *states])
            step_seconds += time.perf_counter() - began
            if state_count:
                states, outputs = outputs[-state_count:], outputs[:-state_count]
            scores = np.asarray(outputs[0])[0].reshape(-1)
            frames += 1
            if on_frame is not None:
                on_frame(frames, scores)
            if limit is not None and frames >= limit:
                break
    finally:
        container.close()
    if frames == 0:
        raise SurgeryError(f"no frame of {source!r} could be decoded" + (f": {failure[0]}" if failure else ""))
    return StreamRun(
        frames, time.perf_counter() - start, step_seconds, scores, run_step.label, failure[0] if failure else None
    )


def _frames(container: Any, video: Any, source: str, failure: list[str]) -> Any:
    """The decoded frames; a decoder error (a truncated or damaged file) ends them and is
    kept in ``failure`` with the frame it came at, instead of escaping as av's exception."""
    from surgery.video.decode import av_module, ffmpeg_reason

    count = 0
    try:
        for frame in container.decode(video):
            count += 1
            yield frame
    except av_module().error.FFmpegError as error:
        failure.append(f"decoding {source!r} stopped at frame {count + 1}: {ffmpeg_reason(error)}")


def load_trained(net: Net, weights: str | Path | dict) -> int:
    """Put trained values into ``net``'s blobs by the emitted model's parameter names
    (``lstm.weight_ih_l0``, ``scores.bias``); how many were set. A name the net does
    not have, or a shape that differs, is an error naming it."""
    import torch

    from surgery.emitters.torch_names import module_paths
    from surgery.errors import ShapeError, did_you_mean
    from surgery.importers.sources import load_state_dict
    from surgery.ir.blob import Origin

    state = weights if isinstance(weights, dict) else load_state_dict(Path(weights))
    paths = module_paths(layer.name for layer in net.layers())
    blobs = {
        f"{paths.get(layer.name, layer.name)}.{role}": blob
        for layer in net.layers()
        for role, blob in layer.blobs.items()
    }
    for key, value in state.items():
        if key not in blobs:
            raise SurgeryError(
                f"the trained weights name {key!r}, which the step model does not have",
                fix=did_you_mean(key, blobs) or "save the state_dict of the emitted clip model or of its head",
            )
        if tuple(value.shape) != blobs[key].shape:
            raise ShapeError(f"trained {key!r} has shape {list(value.shape)}, the model's is {list(blobs[key].shape)}")
        blobs[key].set_data(torch.as_tensor(value).float(), Origin("derived", "trained weights"))
    return len(state)


def class_names(net: Net, count: int) -> list[str] | None:
    """What the ``count`` scores mean, as the report names its output heads (keep_classes'
    names, a new class as "new N"; the pretrained categories on an untouched head)."""
    from surgery.report import build_report

    for row in build_report(net).rows:
        named = row.get("classes")
        if named and len(named) == count:
            return [name if name is not None else f"new {index}" for index, name in enumerate(named)]
    return None


__all__ = ["StreamRun", "class_names", "stream"]
