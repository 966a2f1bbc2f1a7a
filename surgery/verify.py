"""Parity runs: the emitted PyTorch model, the emitted ONNX file (in onnxruntime) and the
source model on the same seeded inputs.

Three comparisons, each with an explicit tolerance:

- emitted torch vs emitted ONNX, on every deploy output (promise 4: both outputs agree);
- source vs emitted torch, on every *untouched frontier*: the last blobs whose whole
  upstream the spec did not touch (promise 1: untouched means untouched);
- source vs emitted torch on the outputs, when the spec touched nothing upstream of them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgery.emitters.onnx_model import DEFAULT_OPSET, emit_onnx
from surgery.emitters.step import emit_step_onnx, step_net
from surgery.errors import SurgeryError
from surgery.ir import Net
from surgery.layers.time_fold import clip_input, has_time_axis, without_time
from surgery.lazy_torch import torch
from surgery.probe import blob_values
from surgery.tolerances import ATOL, RTOL, SCALE_RTOL


@dataclass(frozen=True)
class Tolerance:
    """When two float tensors count as equal. A comparison passes when either rule holds:

    - ``allclose``: every element has ``|a - b| <= atol + rtol * |b|`` (numpy's rule);
    - ``scale``: the largest difference is tiny next to the output's scale,
      ``max |a - b| <= scale_rtol * max |b|`` (a random-init net's outputs reach 1e11,
      where float32 rounding alone exceeds any absolute bound, and elements near zero
      sit next to huge ones).
    """

    atol: float = ATOL
    rtol: float = RTOL
    scale_rtol: float = SCALE_RTOL


@dataclass
class Comparison:
    """One compared tensor: what against what, and how far apart.

    ``max_rel`` is the largest difference over the reference's largest magnitude;
    ``allclose_ratio`` the worst ``|a - b| / (atol + rtol * |b|)`` (at most 1 passes)."""

    what: str
    blob: str
    max_abs: float
    max_rel: float
    tolerance: Tolerance = field(default_factory=Tolerance)
    allclose_ratio: float = 0.0

    @property
    def atol(self) -> float:
        return self.tolerance.atol

    @property
    def allclose_ok(self) -> bool:
        return self.allclose_ratio <= 1.0

    @property
    def scale_ok(self) -> bool:
        return self.max_rel <= self.tolerance.scale_rtol

    @property
    def ok(self) -> bool:
        return self.allclose_ok or self.scale_ok


@dataclass
class VerifyResult:
    """The comparisons of one verify run and where each side ran.

    ``provider``: the onnxruntime provider that ran the ONNX side, with its precision
    (``CUDAExecutionProvider (fp32, TF32 off)``); ``device``: where the torch side ran."""

    provider: str
    comparisons: list[Comparison] = field(default_factory=list)
    device: str = "cpu"
    tf32: bool = False
    #: a reduced-precision deploy file against float32 (:func:`surgery.precision.compare`)
    precision: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons) and (self.precision is None or bool(self.precision["ok"]))


#: onnxruntime's CUDA provider runs float32 convolutions and matmuls in TF32 unless told
#: not to: ten bits of mantissa, 1e-3 relative differences. Verify compares at fp32.
CUDA_FP32_OPTIONS = {"use_tf32": "0"}


def onnx_session(path: Path, *, tf32: bool = False):
    """An onnxruntime session on the CUDA provider when it really starts (at full fp32
    unless ``tf32``), else the CPU. ``session.get_providers()[0]`` is the provider that
    actually runs; :func:`provider_label` says it with its precision."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the GPU package logs noise when it falls back to the CPU
    if "CUDAExecutionProvider" in ort.get_available_providers():
        cuda_options = {} if tf32 else dict(CUDA_FP32_OPTIONS)
        try:
            session = ort.InferenceSession(
                str(path), options, providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
            )
        except Exception:  # noqa: BLE001  (a CUDA build without a GPU: fall back to the CPU, and say so)
            session = None
        if session is not None and session.get_providers()[0] == "CUDAExecutionProvider":
            return session
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def provider_label(session, tf32: bool = False) -> str:
    """The provider that ran ``session`` and its float32 precision."""
    provider = session.get_providers()[0]
    if provider == "CUDAExecutionProvider":
        return f"{provider} ({'TF32 on, as onnxruntime-gpu by default' if tf32 else 'fp32, TF32 off'})"
    return f"{provider} (fp32)"


def torch_device(name: str, command: str = "verify") -> torch.device:
    """The torch device ``command`` (verify, features, stream) runs on: a clear error for
    an unknown device, or when CUDA is asked for and absent."""
    from surgery.errors import SpecError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SpecError(f"unknown device {name!r}", fix="use --device cpu or --device cuda (cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise SpecError(
            f"{command} runs on the CPU or a CUDA GPU, not {name!r}", fix="use --device cpu or --device cuda"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda
            raise SpecError(
                f"--device {name} asks for a CUDA GPU, and torch {torch.__version__} sees none",
                fix=f"run {command} on the CPU (--device cpu); "
                + (
                    f"this torch is built for CUDA {built}: check the driver and CUDA_VISIBLE_DEVICES"
                    if built
                    else "this torch has no CUDA: install a CUDA build of torch"
                ),
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError(
                f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s)",
                fix=f"use an index below {torch.cuda.device_count()}",
            )
    return device


@contextmanager
def full_fp32() -> Iterator[None]:
    """torch's float32 convolutions and matmuls at full precision (no TF32) inside the
    block; the caller's settings come back after it."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def compare(what: str, blob: str, ours: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> Comparison:
    """How far ``ours`` is from ``reference`` under both rules of ``tolerance``."""
    if ours.shape != reference.shape:
        return Comparison(what, blob, float("inf"), float("inf"), tolerance, float("inf"))
    if not ours.size:
        return Comparison(what, blob, 0.0, 0.0, tolerance, 0.0)
    a, b = ours.astype(np.float64), reference.astype(np.float64)
    delta, magnitude = np.abs(a - b), np.abs(b)
    max_abs, scale = float(np.max(delta)), float(np.max(magnitude))
    bound = tolerance.atol + tolerance.rtol * magnitude
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(delta <= bound, 0.0, delta / np.where(bound > 0, bound, 0.0))
    ratio = float(np.max(np.nan_to_num(ratios, nan=np.inf)))
    if not np.isfinite(delta).all():
        max_abs, ratio = float("inf"), float("inf")
    return Comparison(what, blob, max_abs, max_abs / scale if scale else max_abs, tolerance, ratio)


def seeded_inputs(net: Net, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {layer.outputs[0]: torch.randn(*layer.params["shape"], generator=generator) for layer in net.input_layers()}


def untouched_frontier(source: Net, edited: Net) -> list[str]:
    """Blobs of ``edited`` computed exactly as in ``source`` whose consumers (or the net
    output) are where the edits begin."""

    def untouched(name: str) -> bool:
        if name not in source:
            return False
        a, b = edited.layer(name), source.layer(name)
        # use_global_stats only changes training; the deploy computation is the same.
        same_params = {k: v for k, v in a.params.items() if k != "use_global_stats"} == {
            k: v for k, v in b.params.items() if k != "use_global_stats"
        }
        return (
            a.type == b.type
            and a.inputs == b.inputs
            and a.outputs == b.outputs
            and same_params
            and set(a.blobs) == set(b.blobs)
            and all(a.blobs[r].origin == b.blobs[r].origin and a.blobs[r].shape == b.blobs[r].shape for r in a.blobs)
        )

    clean = {
        name for name in edited.layer_names() if untouched(name) and all(untouched(n) for n in edited.ancestors(name))
    }
    frontier = []
    for name in edited.layer_names():
        layer = edited.layer(name)
        if name not in clean or layer.type == "Input":
            continue
        for blob in layer.outputs:
            readers = [c.name for c, _ in edited.consumers(blob)]
            if blob in edited.outputs or any(r not in clean for r in readers):
                frontier.append(blob)
    return frontier


def _torch_blobs(
    net: Net, blobs: list[str], inputs: dict[str, torch.Tensor], device: torch.device | None = None
) -> dict[str, np.ndarray]:
    values = blob_values(net, blobs, list(inputs.values()), device=device)
    return {name: value.detach().cpu().numpy() for name, value in values.items()}


def verify(
    source: Net,
    edited: Net,
    *,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
    scale_rtol: float = SCALE_RTOL,
    opset: int = DEFAULT_OPSET,
    device: str = "cpu",
    tf32: bool = False,
) -> VerifyResult:
    """Compare emitted torch, emitted ONNX (onnxruntime) and the source.

    Args:
        source: the source model as loaded (with its weights).
        edited: the net after the spec's edits.
        seed: seeds the random inputs (standard normal, the Input layers' shapes).
        atol, rtol, scale_rtol: the :class:`Tolerance` (a comparison passes when every
            element is within ``atol + rtol * |b|``, or when the largest difference is
            within ``scale_rtol`` of the reference's largest magnitude).
        device: where the torch side (emitted model and source) runs: ``cpu`` or
            ``cuda``; on a GPU at full fp32 (TF32 off), the caller's settings restored.
        tf32: let onnxruntime's CUDA provider run in TF32, as a deployment with
            onnxruntime-gpu's defaults does (verify compares at fp32 otherwise).

    Example:
        >>> result = verify(surgery.load(model, shape), edited)
        >>> print(format_verify(result)); assert result.ok
    """
    torch_on = torch_device(device)
    with full_fp32():
        return _verify(source, edited, seed, Tolerance(atol, rtol, scale_rtol), opset, torch_on, tf32)


def _verify(
    source: Net, edited: Net, seed: int, tolerance: Tolerance, opset: int, device: torch.device, tf32: bool
) -> VerifyResult:
    inputs = seeded_inputs(edited, seed)
    deploy = edited.outputs_for(None)
    ours = _torch_blobs(edited, deploy, inputs, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = emit_onnx(edited, Path(tmp) / "model.onnx", opset=opset)
        session = onnx_session(path, tf32=tf32)
        feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        theirs = dict(zip(names, session.run(names, feeds)))
        provider = provider_label(session, tf32)
    result = VerifyResult(provider, device=str(device), tf32=tf32 and provider.startswith("CUDA"))
    for blob in deploy:
        result.comparisons.append(compare("onnx vs torch", blob, theirs[blob], ours[blob], tolerance))
    if has_time_axis(edited):  # a clip model: the source runs on its frames; the step model on them in turn
        result.comparisons += _frame_comparisons(source, edited, inputs, tolerance, device)
        result.comparisons += _step_comparisons(edited, inputs, theirs, tolerance, opset, tf32)
        return result
    frontier = untouched_frontier(source, edited)
    if frontier:
        source_values = _torch_blobs(source, frontier, {k: inputs[k] for k in seeded_inputs(source, seed)}, device)
        edited_values = _torch_blobs(edited, frontier, inputs, device)
        for blob in frontier:
            result.comparisons.append(
                compare("torch vs source (untouched)", blob, edited_values[blob], source_values[blob], tolerance)
            )
    return result


def _frame_comparisons(
    source: Net, edited: Net, inputs: dict[str, torch.Tensor], tolerance: Tolerance, device: torch.device
) -> list[Comparison]:
    """The clip model's untouched per-frame blobs vs the source run on every frame."""
    frontier = untouched_frontier(source, without_time(edited))
    if not frontier:
        return []
    clip = clip_input(edited)
    frames = inputs[clip].flatten(0, 1)
    source_values = _torch_blobs(
        source, frontier, {layer.outputs[0]: frames for layer in source.input_layers()}, device
    )
    edited_values = _torch_blobs(edited, frontier, inputs, device)
    return [
        compare(
            "torch vs source (per frame)",
            blob,
            edited_values[blob].reshape(source_values[blob].shape),
            source_values[blob],
            tolerance,
        )
        for blob in frontier
    ]


def _step_comparisons(
    edited: Net,
    inputs: dict[str, torch.Tensor],
    clip_values: dict[str, np.ndarray],
    tolerance: Tolerance,
    opset: int,
    tf32: bool = False,
) -> list[Comparison]:
    """The ONNX streaming step model fed the clip's frames one by one (from a zero state)
    vs the ONNX clip model; nothing when the head needs the whole clip."""
    try:
        step = step_net(edited)
    except SurgeryError:
        return []
    clip = clip_input(edited)
    frames = inputs[clip].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(emit_step_onnx(edited, Path(tmp) / "model_step.onnx", opset=opset), tf32=tf32)
        names = [o.name for o in session.get_outputs()]
        states = {
            i.name: np.zeros(step.known_shape(i.name), np.float32) for i in session.get_inputs() if i.name != clip
        }
        steps = []
        for t in range(frames.shape[1]):
            out = dict(zip(names, session.run(names, {clip: frames[:, t], **states})))
            states = {name: out[name[:-1]] for name in states}  # "lstm.h0" <- "lstm.h"
            steps.append(out)
    comparisons = []
    for blob in edited.outputs_for(None):
        per_step = step.known_shape(blob)[1:2] == (1,) and edited.known_shape(blob)[1] == frames.shape[1]
        got = np.concatenate([out[blob] for out in steps], 1) if per_step else steps[-1][blob]
        comparisons.append(compare("step model over T vs clip", blob, got, clip_values[blob], tolerance))
    return comparisons


def _verdict(c: Comparison) -> str:
    t = c.tolerance
    if c.allclose_ok:
        return "ok (allclose)"
    if c.scale_ok:
        return f"ok (scale; allclose fails, worst element {c.allclose_ratio:.3g}x its bound)"
    return (
        f"FAIL: allclose (|a-b| <= {t.atol:g} + {t.rtol:g}*|b|) fails, worst element {c.allclose_ratio:.3g}x its "
        f"bound; scale (max abs <= {t.scale_rtol:g} * max |b|) fails, max rel {c.max_rel:.3g}"
    )


def format_verify(result: VerifyResult) -> str:
    """One line per comparison: max abs, max rel (to the output's scale) and which rule passed or failed."""
    lines = [f"onnxruntime provider: {result.provider}"]
    if result.device != "cpu":
        lines.append(f"torch device: {result.device} (fp32, TF32 off)")
    width = max((len(c.blob) for c in result.comparisons), default=10)
    for c in result.comparisons:
        lines.append(
            f"  {c.what:<28} {c.blob:<{width}}  max abs {c.max_abs:.3g}  max rel {c.max_rel:.3g}  {_verdict(c)}"
        )
    if result.precision is not None:
        lines += format_precision(result.precision)
    ran = " (the ONNX side ran in TF32: this compares a TF32 run with fp32)" if result.tf32 else ""
    lines.append(("verified: all within tolerance" if result.ok else "verification FAILED") + ran)
    return "\n".join(lines)


def format_precision(figures: dict[str, Any]) -> list[str]:
    """A reduced-precision file's comparison with float32, for the terminal."""
    agreement = figures["top1_agreement"]
    verdict = (
        "no class scores to agree on"
        if agreement is None
        else f"top-1 agreement {agreement:.4f} (bar {figures['bar']:g}): {'ok' if figures['ok'] else 'BELOW THE BAR'}"
    )
    lines = [
        f"  {figures['precision']} file vs float32 on {figures['inputs']} of {figures['inputs_from']}: {verdict}",
        f"    output max abs {figures['max_abs']:.3g}, mean abs {figures['mean_abs']:.3g}, max rel "
        f"{figures['max_rel']:.3g}; {figures['bytes']:,} bytes, {figures['bytes'] / figures['fp32_bytes']:.2f}x "
        "the float32 file",
    ]
    if figures["worst_layers"]:
        lines.append("    furthest layers (max rel; keep_float them if the agreement falls short):")
        lines += [f"      {row['layer'] or row['tensor']}: {row['max_rel']:.3g}" for row in figures["worst_layers"]]
    return lines
