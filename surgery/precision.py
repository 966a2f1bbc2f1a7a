"""A spec's reduced-precision deploy file (``output { onnx { precision: FP16 | INT8 } }``):
the user's images as calibration inputs, the conversion, and the comparison with float32
that ``verify`` reports.

Images are read through the spec's preprocessing, decoded and transformed exactly as
``surgery features`` does a folder of frames (PyAV, then
:meth:`surgery.preprocess.Preprocess.finish`). The conversions are the libraries' own
(:mod:`surgery.emitters.onnx_precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surgery.errors import SpecError, SurgeryError
from surgery.ir import Net
from surgery.protos import enum_name
from surgery.untrusted import regular_file

if TYPE_CHECKING:
    import onnx

#: How many of the check inputs the per-layer comparison runs (every intermediate tensor
#: of both files is kept for them).
LAYER_CHECK_INPUTS = 8
#: Seeded inputs compared when the spec names no images (FP16 needs none).
RANDOM_CHECK_INPUTS = 16


def image_inputs(net: Net, folder: Path, count: int, field: str) -> np.ndarray:
    """Up to ``count`` images of ``folder`` (sorted by name) as the net's input batch
    ``(N, C, H, W)`` float32.

    Args:
        net: the edited net (its single image input and its preprocessing).
        folder: the images.
        count: how many to read at most (at least 1).
        field: the spec field that names the folder, for messages.

    Raises:
        SpecError: a count below 1, a missing or empty folder, a net without one image
            input, an image that cannot be decoded or gives the wrong number of channels.
    """
    from surgery.video.decode import IMAGE_SUFFIXES, ClipError, FrameConverter, decode_image

    if count < 1:
        raise SpecError(f"{field}: count {count} reads no image", fix="give count: 1 or more (default 200)")
    shape = _image_input(net, field)
    if not folder.is_dir():
        raise SpecError(
            f"{field}: {str(folder)!r} is not a folder", fix="name a folder of images, relative to the spec"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise SpecError(
            f"{field}: {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})",
            fix="put a few hundred images like the deployment's inputs there",
        )
    assert net.preprocess is not None  # _image_input checked it
    convert = FrameConverter(net.preprocess, (int(shape[2]), int(shape[3])))
    batch = []
    for path in files:
        regular_file(path, f"{field} image", SpecError)
        try:
            array, channels = decode_image(path, convert)
        except (ClipError, SurgeryError) as error:
            raise SpecError(f"{field}: {error.message}", fix="remove or replace the image") from None
        if channels != shape[1]:
            raise SpecError(
                f"{field}: image {path.name!r} has {channels} colour channel{'s' * (channels > 1)}, the net's "
                f"input {shape[1]}",
                fix="calibrate on images like the deployment's (grey for a grey net, colour for a colour one)",
            )
        if array.shape != tuple(shape[1:]):
            raise SpecError(
                f"{field}: image {path.name!r} becomes {list(array.shape)}, the net takes {list(shape[1:])}",
                fix="check the image and the spec's preprocess block",
            )
        batch.append(array)
    return np.stack(batch)


def clip_inputs(net: Net, folder: Path, count: int, field: str) -> np.ndarray:
    """Up to ``count`` clips of ``folder`` (sorted by name) as the clip model's input batch
    ``(N, T, C, H, W)``: T frames sampled from each, decoded and preprocessed as
    ``surgery features`` does (a clip shorter than T repeats its last frame)."""
    from surgery.video.decode import ClipError, ClipReader, Sampling, find_clips

    if count < 1:
        raise SpecError(f"{field}: count {count} reads no clip", fix="give count: 1 or more (default 200)")
    inputs = net.input_layers()
    shape = tuple(int(d) for d in inputs[0].params["shape"]) if len(inputs) == 1 else ()
    if len(shape) != 5 or net.preprocess is None:
        raise SpecError(
            f"{field}: clips calibrate a clip model (one input (N, T, C, H, W)); this net's input is {list(shape)}",
            fix="calibrate with images: instead",
        )
    try:
        clips = find_clips(folder)[:count]
    except SurgeryError as error:
        raise SpecError(f"{field}: {error.message}", fix=error.fix) from None
    frames = shape[1]
    batch = []
    for clip in clips:
        try:
            if clip.kind == "npy":
                regular_file(clip.path, f"{field} file", SpecError)
                array = np.load(clip.path, mmap_mode="r", allow_pickle=False)
            else:
                reader = ClipReader(clip, net.preprocess, (shape[3], shape[4]))
                indices = Sampling(frames=frames).indices(reader.count())
                array = np.concatenate(list(reader.batches(indices, frames)))
        except (ClipError, ValueError) as error:
            raise SpecError(f"{field}: clip {clip.name!r}: {error}", fix="remove or replace the clip") from None
        if tuple(array.shape) != shape[1:]:
            raise SpecError(
                f"{field}: clip {clip.name!r} gives {list(array.shape)}, the clip model takes {list(shape[1:])}",
                fix="check the clip and the spec's preprocess block",
            )
        batch.append(np.asarray(array, np.float32))
    return np.stack(batch)


def _image_input(net: Net, field: str) -> tuple[int, ...]:
    inputs = net.input_layers()
    shape = tuple(int(d) for d in inputs[0].params["shape"]) if len(inputs) == 1 else ()
    if len(shape) != 4 or net.preprocess is None:
        raise SpecError(
            f"{field}: images calibrate a net with one image input (N, C, H, W); this net's inputs are "
            f"{[list(layer.params['shape']) for layer in inputs]}",
            fix="remove the calibration block (FP16 needs none; INT8 of a net without images is dynamic)",
        )
    return shape


def precision_name(message: Any) -> str:
    """``FP32``, ``FP16`` or ``INT8`` for an ``output { onnx { } }`` message."""
    return enum_name(message, "precision")


def _calibration_folder(message: Any, base_dir: Path, field: str) -> Path | None:
    value = getattr(message.calibration, field) if message.HasField("calibration") else ""
    return base_dir / value if value else None


def _keep_float_layers(net: Net, message: Any) -> list[str]:
    from surgery.ops.selectors import select

    names = [v for v in message.keep_float if not (len(v) > 1 and v.startswith("/") and v.endswith("/"))]
    regexes = [v[1:-1] for v in message.keep_float if len(v) > 1 and v.startswith("/") and v.endswith("/")]
    return select(net, names=names, regexes=regexes)


@dataclass
class Reduced:
    """A reduced-precision file beside the float32 model it was made from."""

    precision: str
    fp32: onnx.ModelProto
    model: onnx.ModelProto
    calibration: np.ndarray | None
    kept_float: list[str]


def check_spec(net: Net, message: Any, base_dir: Path) -> None:
    """What ``plan`` can tell of an ``output { onnx { } }`` block's precision fields
    without reading an image: located errors for each mistake."""
    precision = precision_name(message)
    if precision == "FP32":
        for field in ("calibration", "keep_float"):
            if message.HasField(field) if field == "calibration" else message.keep_float:
                raise SpecError(
                    f"output.onnx.{field} applies to a reduced precision, and this file is FP32",
                    fix=f"add precision: INT8 (or FP16), or remove {field}",
                )
        return
    if not 0 < message.agreement <= 1:
        raise SpecError(
            f"output.onnx.agreement {message.agreement:g} is not a share of inputs in (0, 1]",
            fix="give e.g. agreement: 0.99",
        )
    if message.external_data:
        raise SpecError(
            f"precision {precision} is written as one file: external_data is for float32 files past 2 GB",
            fix="remove external_data: true",
        )
    if message.HasField("calibration") and message.calibration.count < 1:
        raise SpecError(
            f"output.onnx.calibration.count {message.calibration.count} reads no image", fix="give count: 1 or more"
        )
    folders = {field: _calibration_folder(message, base_dir, field) for field in ("images", "clips", "check")}
    for field, folder in folders.items():
        if folder is not None and not folder.is_dir():
            raise SpecError(
                f"output.onnx.calibration.{field}: {str(folder)!r} is not a folder",
                fix=f"name a folder of {'clips' if field == 'clips' else 'images'}, relative to the spec file",
            )
    if folders["images"] is not None and folders["clips"] is not None:
        raise SpecError("output.onnx.calibration names both images and clips", fix="keep the one the net takes")
    if folders["images"] is not None:
        _image_input(net, "output.onnx.calibration.images")
    if precision == "INT8" and folders["images"] is None and folders["clips"] is None:
        if any(layer.type == "Convolution" for layer in net.layers()):
            raise SpecError(
                "precision INT8 of a net with convolutions is static: it needs calibration images",
                fix='add calibration { images: "calib/" } (a few hundred images like the deployment\'s; '
                'clips: "clips/" for a clip model)',
            )
    _keep_float_layers(net, message)  # each selector must match


def reduce(net: Net, message: Any, base_dir: Path, onnx_options: dict[str, Any]) -> Reduced:
    """The deploy file a spec's ``output { onnx { } }`` block asks for at a precision other
    than FP32, with the float32 model it comes from.

    Raises:
        SpecError: external data asked for (not written at reduced precision), calibration
            images that cannot calibrate (see :func:`image_inputs`), INT8 of a net with
            convolutions and no images.
    """
    from surgery.emitters.onnx_model import build_model
    from surgery.emitters.onnx_precision import nodes_of, to_fp16, to_int8

    check_spec(net, message, base_dir)
    precision = precision_name(message)
    options = {k: v for k, v in onnx_options.items() if k != "external_data"}
    fp32 = build_model(net, **options)
    kept = _keep_float_layers(net, message)
    keep_nodes = nodes_of(fp32, kept)
    if precision == "FP16":
        fp16 = to_fp16(fp32, keep_io_types=message.keep_io_types, keep_nodes=keep_nodes)
        return Reduced(precision, fp32, fp16, None, kept)
    inputs = calibration_inputs(net, message, base_dir)
    method = _method_name(message)
    return Reduced(precision, fp32, to_int8(fp32, inputs=inputs, method=method, keep_nodes=keep_nodes), inputs, kept)


def _method_name(message: Any) -> str:
    return enum_name(message.calibration, "method")


def calibration_inputs(net: Net, message: Any, base_dir: Path) -> np.ndarray | None:
    """The calibration block's images or clips as the net's input batch; None without."""
    images = _calibration_folder(message, base_dir, "images")
    clips = _calibration_folder(message, base_dir, "clips")
    if images is not None:
        return image_inputs(net, images, message.calibration.count, "output.onnx.calibration.images")
    if clips is not None:
        return clip_inputs(net, clips, message.calibration.count, "output.onnx.calibration.clips")
    return None


def check_inputs(net: Net, message: Any, base_dir: Path, reduced: Reduced, seed: int) -> tuple[np.ndarray, str]:
    """What verify compares the reduced file with float32 on, and where it came from: the
    ``check`` folder, else the calibration images, else seeded random inputs."""
    count = message.calibration.count  # the schema's default (200) when there is no block
    clips = len(net.input_layers()[0].params["shape"]) == 5
    check = _calibration_folder(message, base_dir, "check")
    if check is not None:
        field = "output.onnx.calibration.check"
        if clips:
            return clip_inputs(net, check, count, field), f"the check clips {str(check)!r}"
        return image_inputs(net, check, count, field), f"the check images {str(check)!r}"
    if reduced.calibration is not None:
        return reduced.calibration, f"the calibration {'clips' if clips else 'images'}"
    given = calibration_inputs(net, message, base_dir)
    if given is not None:
        return given, f"the calibration {'clips' if clips else 'images'}"
    shape = tuple(int(d) for d in net.input_layers()[0].params["shape"])
    rng = np.random.default_rng(seed)
    return rng.standard_normal((RANDOM_CHECK_INPUTS, *shape[1:])).astype(
        np.float32
    ), f"seeded random inputs (seed {seed})"


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, inputs: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    session = _session(model)
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: inputs[i : i + batch]}) for i in range(0, len(inputs), batch)]
    if len(parts) == 1:
        return list(parts[0])
    # A value without a batch axis (a dynamic quantizer's scale) is the last batch's.
    return [
        np.concatenate([part[k] for part in parts]) if parts[0][k].ndim else parts[-1][k] for k in range(len(parts[0]))
    ]


def _with_intermediates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model with every node's outputs as graph outputs, and each tensor's node."""
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {value.name for value in augmented.graph.output}
    producer = {}
    for node in augmented.graph.node:
        for name in node.output:
            if name and name not in present:
                augmented.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
            producer[name] = node.name
    return augmented, producer


def worst_layers(reduced: Reduced, inputs: np.ndarray, count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` float32 tensors the reduced file is furthest from (largest difference
    over the float32 tensor's largest magnitude), with the node that computes them."""
    fp32, producer = _with_intermediates(reduced.fp32)
    low, _ = _with_intermediates(reduced.model)
    sample = inputs[:LAYER_CHECK_INPUTS]
    names_fp32 = [value.name for value in fp32.graph.output]
    names_low = [value.name for value in low.graph.output]
    a = dict(zip(names_fp32, _run(fp32, sample)))
    b = dict(zip(names_low, _run(low, sample)))
    rows = []
    for name, reference in a.items():
        # In a QDQ file the value the next layer reads is the dequantized copy (the named
        # tensor itself may be a fused node's raw output, before a Relu that QDQ removed).
        other = b.get(f"{name}_DequantizeLinear_Output", b.get(name))
        if other is None or reference.dtype.kind != "f" or other.shape != reference.shape or not reference.size:
            continue
        scale = float(np.abs(reference).max()) or 1.0
        error = float(np.abs(other.astype(np.float32) - reference).max())
        rows.append({"layer": producer.get(name, ""), "tensor": name, "max_abs": error, "max_rel": error / scale})
    rows.sort(key=lambda row: -row["max_rel"])
    return rows[:count]


def compare(reduced: Reduced, inputs: np.ndarray, source: str, bar: float) -> dict[str, Any]:
    """The reduced file against float32 on ``inputs``: top-1 agreement of the first output
    (when it holds class scores, ``(N, classes)``), its max and mean absolute error, the
    worst layers, the file sizes, and whether the agreement reaches ``bar``."""
    first, second = _run(reduced.fp32, inputs)[0], _run(reduced.model, inputs)[0].astype(np.float32)
    difference = np.abs(second - first)
    scores = first.ndim == 2 and first.shape[1] > 1
    agreement = float((first.argmax(1) == second.argmax(1)).mean()) if scores else None
    return {
        "precision": reduced.precision,
        "inputs": len(inputs),
        "inputs_from": source,
        "top1_agreement": agreement,
        "bar": float(bar),
        "max_abs": float(difference.max()),
        "mean_abs": float(difference.mean()),
        "max_rel": float(difference.max() / (np.abs(first).max() or 1.0)),
        "fp32_bytes": reduced.fp32.ByteSize(),
        "bytes": reduced.model.ByteSize(),
        "kept_float": reduced.kept_float,
        "worst_layers": worst_layers(reduced, inputs),
        "ok": agreement is None or agreement >= bar,
    }
