"""The Python API: what scripts and the CLI both call.

Scripted surgery without a spec file::

    import surgery
    from surgery.zoo import DigitsCNN

    net = surgery.load(DigitsCNN(), input_shape=(1, 1, 8, 8))
    surgery.classifier(net, layer=["classifier.fc2"], num_output=2, seed=7)
    surgery.lr(net, up_to="features.pool2", lr_mult=0)
    model = surgery.to_torch(net)                     # a trainable nn.Module
    optimizer = torch.optim.SGD(model.param_groups(lr=0.01), momentum=0.9)

A spec file is the same list of calls: ``surgery.apply("specs/x.prototxt", "out/x")``.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from torch import nn

import surgery.layers  # noqa: F401  (registers the layer types)
from surgery import ops, output_folder
from surgery.emitters.files import FileLog, write_bytes
from surgery.emitters.torch_module import emit_torch, save_torch_folder
from surgery.errors import ModelFormatError, SpecError, SurgeryError
from surgery.importers.sources import load_source, load_torch_source
from surgery.importers.torch_fx import import_torch
from surgery.ir import Net
from surgery.ops.base import Action, OpContext
from surgery.report import Report, build_report
from surgery.spec import LoadedSpec, load_spec, spec_class
from surgery.spec.loader import spec_to_dict

Progress = Callable[[str], None]
_EDIT_MESSAGES = {"classifier": "Classifier", "lr": "Lr", "cut": "Cut", "append": "Append", "insert": "Insert",
                  "remove": "Remove", "collapse": "Collapse", "eltwise": "EltwiseInsert",
                  "fold_batchnorm": "FoldBatchNorm", "replace": "Replace", "fc_to_conv": "FcToConv",
                  "sequence": "Sequence"}


# ------------------------------------------------------------------ loading
def load(model: Any, input_shape: Iterable[int] | None = None, *, weights: str | Path | None = None,
         name: str | None = None, shapes_only: bool = False, nhwc_input: bool = False) -> Net:
    """Load a network as a :class:`Net`.

    Args:
        model: an ``nn.Module``; a factory reference ``"package.module:callable"`` or
            ``"file.py:callable"``; an ``.onnx`` file; a Caffe ``.prototxt``; or a Keras
            ``.keras`` / ``.h5`` file.
        input_shape: the input's shape, batch axis first (needed for torch models; in
            Keras's order, batch, height, width, channels, for a Keras file).
        weights: a state_dict file (torch factory) or a ``.caffemodel`` (Caffe).
        name: the net's name.
        shapes_only: only names and shapes are needed (a torch factory is then built on
            the meta device: no weights are initialised or read).
        nhwc_input: a Keras file's net keeps Keras's channels-last input (one transpose
            at the input); other formats refuse it.

    Example:
        >>> net = surgery.load("torchvision.models:resnet18", (1, 3, 224, 224))
    """
    shape = tuple(input_shape) if input_shape is not None else ()
    if nhwc_input and (isinstance(model, nn.Module) or Path(str(model)).suffix.lower() not in (".keras", ".h5", ".hdf5")):
        raise SpecError("nhwc_input applies to Keras files only", fix="drop nhwc_input=True")
    if isinstance(model, nn.Module):
        if not shape:
            raise SpecError("loading a torch module needs input_shape", fix="pass input_shape=(1, 3, 224, 224)")
        return import_torch(model, shape, name=name)
    reference = str(model)
    suffix = Path(reference).suffix.lower()
    if Path(reference).is_dir():
        raise ModelFormatError(f"{reference!r} is a folder, not a model file",
                               fix="name the .onnx / .prototxt file, or a torch factory 'package.module:callable'")
    if suffix not in (".onnx", ".keras", ".h5", ".hdf5") and _is_caffe_text(Path(reference)):
        suffix = ".prototxt"
    if suffix == ".onnx":
        from surgery.importers.onnx_model import import_onnx

        return import_onnx(Path(reference), input_shape=shape or None)
    if suffix in (".prototxt", ".pbtxt"):
        from surgery.importers.caffe import import_caffe

        return import_caffe(Path(reference), Path(weights) if weights else None, input_shape=shape or None)
    if suffix in (".keras", ".h5", ".hdf5"):
        from surgery.importers.keras import import_keras

        return import_keras(Path(reference), input_shape=shape or None, name=name, nhwc_input=nhwc_input)
    return load_torch_source(reference, "", str(weights or ""), shape, Path.cwd(), name, shapes_only)


def _is_caffe_text(path: Path) -> bool:
    """A Caffe network definition, told by content (any file name)."""
    from surgery.spec.loader import sniff_text

    if not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(1 << 16)
    return b"\0" not in head and sniff_text(head.decode("utf-8", errors="replace"))[0] == "caffe"


# -------------------------------------------------------------------- edits
def edit(net: Net, op: str, *, seed: int = 0, **fields: Any) -> list[Action]:
    """Apply one spec operation by name, with the spec's fields as keyword arguments.

    The fields go through the same schema as spec files (unknown names are rejected).
    If the operation fails, the net is left exactly as it was.

    Example:
        >>> surgery.edit(net, "lr", match=["features.*"], lr_mult=0)
    """
    if op not in _EDIT_MESSAGES:
        from surgery.errors import did_you_mean

        raise SpecError(f"unknown operation {op!r}", fix=did_you_mean(op, _EDIT_MESSAGES) or
                        f"operations: {', '.join(_EDIT_MESSAGES)}")
    message = spec_class(_EDIT_MESSAGES[op])()
    try:
        json_format.ParseDict({k: v for k, v in fields.items() if v is not None}, message)
    except json_format.ParseError as error:
        raise SpecError(f"{op}: {error}") from None
    return run_edit(net, op, message, OpContext(seed))


def run_edit(net: Net, op: str, message: Any, ctx: OpContext) -> list[Action]:
    """Run one operation as a transaction: on error the net is unchanged. A layer
    downstream that no longer fits (e.g. after an ``insert``) fails here, so the error
    belongs to this edit."""
    with net.transaction():
        actions = ops.op_function(op)(net, message, ctx)
        net.ensure_shapes()
        return actions


def _layers(layers: Iterable[dict | str]) -> list[dict]:
    out = []
    for item in layers:
        if isinstance(item, str):  # Caffe syntax: 'name: "fc" type: "InnerProduct" ...'
            message = spec_class("Append")()
            text_format.Parse(f"layer {{ {item} }}", message)
            out.append(json_format.MessageToDict(message.layer[0], preserving_proto_field_name=True))
        else:
            out.append(item)
    return out


def classifier(net: Net, layer: str | list[str], *, rename: str | list[str] | None = None,
               num_output: int | None = None, weight_filler: dict | None = None, bias_filler: dict | None = None,
               propagate: str | None = None, seed: int = 0) -> list[Action]:
    """Rename and/or resize classifier layers with fresh filler weights.

    Example:
        >>> surgery.classifier(net, ["loss1/classifier", "loss2/classifier", "loss3/classifier"],
        ...                    rename=["loss1/flowers", "loss2/flowers", "loss3/flowers"], num_output=102)
    """
    return edit(net, "classifier", seed=seed, layer=_list(layer), rename=_list(rename), num_output=num_output,
                weight_filler=weight_filler, bias_filler=bias_filler, propagate=propagate)


def lr(net: Net, *, layer: str | list[str] | None = None, match: str | list[str] | None = None,
       regex: str | list[str] | None = None, up_to: str | None = None, lr_mult: float | None = None,
       decay_mult: float | None = None, blob: str | None = None) -> list[Action]:
    """Set lr_mult / decay_mult (0 = frozen) by name, glob, regex or "up to layer X"."""
    return edit(net, "lr", layer=_list(layer), match=_list(match), regex=_list(regex), up_to=up_to,
                lr_mult=lr_mult, decay_mult=decay_mult, blob=blob)


def cut(net: Net, at: str) -> list[Action]:
    """Keep the net up to and including layer ``at``."""
    return edit(net, "cut", at=at)


def append(net: Net, layers: Iterable[dict | str], *, seed: int = 0) -> list[Action]:
    """Stack new layers (Caffe syntax, as dicts or prototxt text) on the net's output."""
    return edit(net, "append", seed=seed, layer=_layers(layers))


def insert(net: Net, after: str, layers: Iterable[dict | str], *, before: str | None = None,
           seed: int = 0) -> list[Action]:
    """Insert new layers between ``after`` and its consumers (or only ``before``)."""
    return edit(net, "insert", seed=seed, after=after, before=before, layer=_layers(layers))


def remove(net: Net, *, layer: str | list[str] | None = None, branch: str | list[str] | None = None) -> list[Action]:
    """Bypass one-in-one-out layers, or delete branches with everything downstream."""
    return edit(net, "remove", layer=_list(layer), branch=_list(branch))


def collapse(net: Net, first: str, second: str, name: str, *, mode: str = "EXACT", kernel_size: int | None = None,
             accept_border: bool | None = None, calibration: str | None = None, samples: int | None = None,
             weight_filler: dict | None = None, seed: int = 0) -> list[Action]:
    """Two convolutions into one (``mode`` EXACT / FIT / FRESH)."""
    return edit(net, "collapse", seed=seed, first=first, second=second, name=name, mode=mode,
                kernel_size=kernel_size, accept_border=accept_border, calibration=calibration, samples=samples,
                weight_filler=weight_filler)


def eltwise(net: Net, name: str, bottom: str | list[str], *, operation: str = "PROD",
            layers: Iterable[dict | str] = (), near_identity: bool | None = None, allow_zero: bool | None = None,
            seed: int = 0) -> list[Action]:
    """Insert an elementwise PROD / SUM / MAX (broadcasting) of ``bottom[0]`` and a second
    input (``bottom[1]``, or the output of new ``layers``)."""
    return edit(net, "eltwise", seed=seed, name=name, bottom=_list(bottom), operation=operation,
                layer=_layers(layers) or None, near_identity=near_identity, allow_zero=allow_zero)


def fold_batchnorm(net: Net, layer: str | list[str] | None = None) -> list[Action]:
    """Fold BatchNorm (+ Scale) into the preceding Convolution / InnerProduct."""
    return edit(net, "fold_batchnorm", layer=_list(layer))


def replace(net: Net, layer: str, by: dict | str, *, propagate: str = "REINIT", seed: int = 0) -> list[Action]:
    """Give ``layer`` a new definition (Caffe syntax), keeping weights that still fit."""
    return edit(net, "replace", seed=seed, layer=layer, by=_layers([by])[0], propagate=propagate)


def fc_to_conv(net: Net, layer: str | list[str]) -> list[Action]:
    """InnerProduct layers into equivalent Convolutions (fully convolutional use)."""
    return edit(net, "fc_to_conv", layer=_list(layer))


def sequence(net: Net, layers: Iterable[dict | str], *, at: str | None = None, frames: int = 16,
             seed: int = 0) -> list[Action]:
    """Make an image net a clip model: input ``(N, T, C, H, W)``, every layer up to ``at``
    run per frame, then a temporal head (Caffe syntax) on the per-frame features ``(N, T, F)``.

    Example:
        >>> surgery.sequence(net, ['name: "lstm" type: "LSTM" recurrent_param { num_output: 64 '
        ...                        'return_sequences: false }',
        ...                        'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }'],
        ...                  at="features.pool2", frames=40)
    """
    return edit(net, "sequence", seed=seed, at=at, frames=frames, layer=_layers(layers))


def _list(value: Any) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------------ outputs
def to_torch(net: Net, copy: bool = True) -> nn.Module:
    """The net as a trainable ``nn.Module`` (see :func:`surgery.emitters.torch_module.emit_torch`).

    The module has ``param_groups(lr, weight_decay)`` for torch.optim; frozen parameters
    have ``requires_grad=False``. ``copy=False`` shares storage with the source weights.
    """
    return emit_torch(net, copy_weights=copy)


def save_torch(net: Net, folder: str | Path) -> Path:
    """Write a standalone folder (``model.py`` + ``weights.pt``) that loads with only torch."""
    return save_torch_folder(net, Path(folder))


def report(net: Net, actions: list[Action] | None = None) -> Report:
    """The per-layer report of ``net`` (type, shape, params, origin, lr, trainable)."""
    return build_report(net, actions)


def save_onnx(net: Net, path: str | Path, **options: Any) -> Path:
    """Write the deploy ONNX file (see :func:`surgery.emitters.onnx_model.emit_onnx`)."""
    from surgery.emitters.onnx_model import emit_onnx

    return emit_onnx(net, path, **options)


# -------------------------------------------------------------------- specs
@dataclass
class Plan:
    """A validated spec applied in memory: the edited net and its report."""

    spec: LoadedSpec
    net: Net
    report: Report
    timings: dict[str, float] = field(default_factory=dict)
    #: The source net as loaded, before the edits: structure only, no weights.
    source: Net | None = None


def _step(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)


def plan(spec_path: str | Path, progress: Progress | None = None, *, shapes_only: bool = True,
         source: Net | None = None) -> Plan:
    """Load the spec and its source, apply every edit in memory, build the report.

    Writes nothing, and with ``shapes_only`` (the default) reads no weights: the plan's
    net then has names, shapes and new-layer weights only. ``source``: edit a copy of
    this already loaded net instead of loading the spec's source. Errors carry the
    spec's ``file:line:col``.
    """
    return _plan(load_spec(spec_path), progress, shapes_only=shapes_only, source=source)


def _plan(loaded: LoadedSpec, progress: Progress | None, *, shapes_only: bool, source: Net | None = None) -> Plan:
    message = loaded.message
    _check_output_versions(loaded)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if source is not None:
        net = source.copy()
    else:
        _step(progress, f"loading the source model of {loaded.path}")
        try:
            net = load_source(message.source, loaded.base_dir, name=message.name or None, shapes_only=shapes_only,
                              seed=message.seed)
        except SurgeryError as error:
            error.location = error.location or loaded.locator.section("source", error.subject)
            raise
    timings["load"] = time.perf_counter() - start
    before = net.skeleton()
    actions: list[Action] = []
    ctx = OpContext(seed=message.seed, base_dir=loaded.base_dir, shapes_only=shapes_only)
    for index, item in enumerate(message.edit):
        op = item.WhichOneof("op")
        if op is None:
            raise SpecError("empty edit", location=loaded.locator.edit(index), fix="put one operation inside edit { }")
        _step(progress, f"edit {index + 1}/{len(message.edit)}: {op}")
        try:
            done = run_edit(net, op, getattr(item, op), ctx)
        except SurgeryError as error:
            error.location = error.location or loaded.locator.find(index, error.subject)
            raise
        # Each row of the report points at the spec line that did it.
        actions += [dataclasses.replace(a, where=loaded.locator.find(index, a.was or a.layer)) for a in done]
    timings["edits"] = time.perf_counter() - start - timings["load"]
    return Plan(loaded, net, build_report(net, actions, spec_to_dict(message)), timings, before)


def _check_output_versions(loaded: LoadedSpec) -> None:
    """The ONNX opset / IR version the spec asks for, against what is installed."""
    onnx = loaded.message.output.onnx
    if not (onnx.HasField("opset") or onnx.HasField("ir_version")):
        return
    from surgery.emitters.onnx_model import check_versions

    try:
        check_versions(onnx.opset if onnx.HasField("opset") else None,
                       onnx.ir_version if onnx.HasField("ir_version") else None)
    except SurgeryError as error:
        error.location = loaded.locator.section("output", error.subject)
        raise


@dataclass
class ApplyResult:
    """What ``apply`` wrote."""

    out_dir: Path
    files: list[Path]
    report: Report
    timings: dict[str, float]
    #: The verify result, when ``apply(..., verify=True)`` ran it.
    verified: Any = None


def apply(spec_path: str | Path, out_dir: str | Path, *, force: bool = False, force_any: bool = False,
          progress: Progress | None = None, verify: bool = False, seed: int = 0, atol: float = 1e-5,
          rtol: float = 1e-4, scale_rtol: float = 1e-5) -> ApplyResult:
    """Apply a spec and write its outputs into ``out_dir``, atomically.

    Everything is built in a staging folder beside ``out_dir`` that becomes ``out_dir``
    in one step when complete, so ``out_dir`` is always either as it was or complete
    (see :mod:`surgery.output_folder`). Inputs are never modified; every output lands
    inside ``out_dir``; ``report.json`` records the sha256 and size of every input and
    output file.

    Args:
        spec_path: the spec file (prototxt, YAML or JSON).
        out_dir: the output folder; it must not exist (or be empty) unless ``force``,
            and may not be or hold an input of the run.
        force: replace an existing ``out_dir`` that a previous apply wrote.
        force_any: replace an existing ``out_dir`` whatever it holds.
        progress: called with a line of text at each step.
        verify: also run :func:`verify` (seeded inputs ``seed``, tolerances ``atol``,
            ``rtol``, ``scale_rtol``) and
            put its figures in ``report.json`` and ``report.html``; the outputs are
            written either way, and ``result.verified.ok`` says whether it passed.

    Example:
        >>> result = surgery.apply("specs/digits_parity.prototxt", "out/digits_parity")
        >>> print(result.report.format_table())
    """
    out = output_folder.output_path(out_dir)
    output_folder.clean_stale(out)
    loaded = load_spec(spec_path)
    try:
        output_folder.check_output_paths(output_folder.declared_outputs(loaded.message))
    except SurgeryError as error:
        error.location = error.location or loaded.locator.section("output", error.subject)
        raise
    inputs = output_folder.input_files(loaded)
    target = output_folder.check_target(out, inputs, force=force, force_any=force_any)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgery-hash") as pool:
        input_hashes = pool.submit(output_folder.file_records, inputs, loaded.base_dir)  # beside the work
        verified = None
        if verify:
            source = _load_source(loaded, progress)
            planned = _plan(loaded, progress, shapes_only=False, source=source)
            verified = _run_verify(source, planned, seed, progress, atol=atol, rtol=rtol, scale_rtol=scale_rtol)
        else:
            planned = _plan(loaded, progress, shapes_only=False)
        timings = dict(planned.timings)
        start = time.perf_counter()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _check_free_space(planned, out.parent)
            staging = output_folder.make_staging(out)
        except OSError as error:
            raise _write_error(error, out) from None
        try:
            log = FileLog(exclusive=True)
            _write_outputs(planned, staging, log, progress)
            planned.report.files = {"inputs": input_hashes.result(),
                                    "outputs": output_folder.output_records(log, staging)}
            write_bytes(staging / "report.json", planned.report.to_json().encode(), log)
            _step(progress, f"moving the outputs into {out}")
            output_folder.publish(staging, target)
        except BaseException as error:
            output_folder.remove_output(staging)
            if isinstance(error, OSError):
                raise _write_error(error, out) from None
            if isinstance(error, SurgeryError):
                error.location = error.location or planned.spec.locator.section("output", error.subject)
            raise
    timings["write"] = time.perf_counter() - start
    shown = Path(out_dir)
    return ApplyResult(shown, [shown / path.relative_to(staging) for path in log.files], planned.report, timings,
                       verified)


def _write_error(error: OSError, out: Path) -> SurgeryError:
    """What failed and where, for an OS refusal while writing (a full disk, a read-only
    or forbidden folder); the partial output is already gone."""
    where = error.filename or out
    fixes = {errno.ENOSPC: "free some space there, or write to another disk with -o",
             errno.EROFS: "choose an -o folder on a writable disk",
             errno.EACCES: "choose an -o folder you may write to", errno.EPERM: "choose an -o folder you may write to"}
    return SurgeryError(f"cannot write the outputs to {str(out)!r}: {error.strerror or error} ({where}); "
                        "nothing was written", fix=fixes.get(error.errno, "check the -o folder and its disk"))


def _check_free_space(planned: Plan, folder: Path) -> None:
    """Refuse, with the figures, outputs that cannot fit on the disk (a writer that runs
    out of space mid-file fails in ways that do not say so)."""
    message, output = planned.spec.message, planned.spec.message.output
    copies = sum((output.HasField("pytorch") or not message.HasField("output"),
                  output.HasField("onnx") or not message.HasField("output"), output.HasField("caffe")))
    copies += 2 * output.HasField("step") + 2 * output.HasField("split")  # torch + ONNX of each
    weights = sum(blob.numel * blob.dtype.itemsize for layer in planned.net.layers() for blob in layer.blobs.values())
    # model.py, report.json, headers; report.html takes about 2 kB a layer (two pictures, a table row)
    needed = copies * weights + (64 << 10) + 4096 * len(planned.net)
    free = shutil.disk_usage(folder).free
    if needed > free:
        from surgery.ir.budget import human_bytes

        raise SurgeryError(f"the outputs need about {human_bytes(needed)} and the disk of {str(folder)!r} has "
                           f"{human_bytes(free)} free: No space left on device", fix="free some space there, or "
                           "write to another disk with -o")


def _write_outputs(planned: Plan, staging: Path, log: FileLog, progress: Progress | None) -> None:
    """Every output but report.json into ``staging``, each file recorded in ``log``."""
    message = planned.spec.message
    output = message.output
    # Without an output block, both: the trainable torch folder and the deploy ONNX.
    want_torch = output.HasField("pytorch") or not message.HasField("output")
    want_onnx = output.HasField("onnx") or not message.HasField("output")
    step_net = None
    if output.HasField("step"):  # refused (naming the layer) before anything is written
        from surgery.emitters.step import step_net as make_step_net

        step_net = make_step_net(planned.net)
    split_nets = split(planned.net) if output.HasField("split") else None  # refused before writing, too
    if want_torch:
        _step(progress, f"writing the PyTorch model to {output.pytorch.path}/")
        save_torch_folder(planned.net, staging / output.pytorch.path, log)
    if want_onnx:
        from surgery.emitters.onnx_model import emit_onnx

        onnx = output.onnx
        _step(progress, f"writing {onnx.path}")
        try:
            emit_onnx(planned.net, staging / onnx.path, log=log, **_onnx_options(onnx))
        except SurgeryError as error:
            if not message.HasField("output"):
                error.fix = (error.fix or "") + "; or add `output { pytorch { } }` to the spec to write PyTorch only"
            raise
    if split_nets is not None:
        _write_split(split_nets, staging, output, log, progress)
    if step_net is not None:
        from surgery.emitters.onnx_model import emit_onnx

        _step(progress, f"writing the streaming step model: {output.step.onnx}, {output.step.pytorch}/")
        versions = {k: v for k, v in _onnx_options(output.onnx).items() if k in ("opset", "ir_version")}
        emit_onnx(step_net, staging / output.step.onnx, log=log, **versions)
        save_torch_folder(step_net, staging / output.step.pytorch, log)
    if output.HasField("caffe"):
        from surgery.emitters.caffe import emit_caffe

        _step(progress, f"writing {output.caffe.prototxt} and {output.caffe.weights}")
        emit_caffe(planned.net, staging / output.caffe.prototxt, staging / output.caffe.weights, log)
    _step(progress, "writing report.html")
    write_bytes(staging / "report.html", report_page(planned, planned.report.verify).encode("utf-8"), log)


def draw(spec_path: str | Path, out_path: str | Path, *, show_all: bool = False,
         progress: Progress | None = None) -> Path:
    """Draw the change a spec makes: the source net beside the edited net, each layer
    coloured by what happened to it (kept / re-initialised / derived / added / dropped /
    renamed), frozen layers and other lr_mults marked, the spec line of every change.

    Runs like :func:`plan`: reads no weights, writes only ``out_path`` (atomically).

    Args:
        spec_path: the spec file.
        out_path: ``.svg``, ``.png`` (needs the ``png`` extra: resvg) or ``.html`` (the
            report page, without weight or verify figures).
        show_all: draw every layer (by default runs of unchanged layers fold into one box).

    Example:
        >>> surgery.draw("specs/googlenet_flowers.prototxt", "change.svg")
    """
    from surgery.change import change_svg
    from surgery.emitters.picture.files import write_picture

    out = Path(out_path)
    kind = out.suffix.lower()
    if kind not in (".svg", ".png", ".html"):
        raise SpecError(f"cannot draw to {str(out)!r}: unknown picture type {kind or '(none)'!r}",
                        fix="name the output .svg, .png or .html")
    planned = plan(spec_path, progress)
    if out.resolve() == planned.spec.path.resolve():
        raise SpecError(f"{str(out)!r} is the spec itself", fix="choose another output file")
    _step(progress, f"drawing {out}")
    if kind == ".html":
        return write_picture(out, report_page(planned))
    return write_picture(out, change_svg(planned.source, planned.net, planned.report, show_all=show_all))


def report_page(planned: Plan, verified: Any = None, *, show_all: bool = False) -> str:
    """The self-contained HTML report of a plan (``verified``: a verify result to show)."""
    from surgery.change import report_html

    return report_html(planned.spec.path, planned.source, planned.net, planned.report, verified, show_all=show_all)


def _write_split(nets: tuple[Net, Net], staging: Path, output: Any, log: FileLog, progress: Progress | None) -> None:
    """The backbone and the head of a clip model, each a PyTorch folder with its ONNX file inside."""
    from surgery.emitters.onnx_model import emit_onnx

    versions = {k: v for k, v in _onnx_options(output.onnx).items() if k in ("opset", "ir_version")}
    for part, folder in zip(nets, (output.split.backbone, output.split.head)):
        _step(progress, f"writing the split model's {folder}/")
        save_torch_folder(part, staging / folder, log)
        emit_onnx(part, staging / folder / f"{Path(folder).name}.onnx", log=log, **versions)


def verify(spec_path: str | Path, *, seed: int = 0, atol: float = 1e-5, rtol: float = 1e-4, scale_rtol: float = 1e-5,
           progress: Progress | None = None, html: str | Path | None = None):
    """Apply a spec in memory and compare emitted torch, emitted ONNX (onnxruntime) and
    the source model on the same seeded inputs. Returns a
    :class:`surgery.verify.VerifyResult` (``.ok``, ``.comparisons``, ``.provider``); see
    :class:`surgery.verify.Tolerance` for ``atol`` / ``rtol`` / ``scale_rtol``.

    ``html``: also write the report page, with these figures, to that ``.html`` file
    (atomically; e.g. over the ``report.html`` an earlier ``apply`` wrote)."""
    if html is not None and Path(html).suffix.lower() != ".html":
        raise SpecError(f"cannot write the report page to {str(html)!r}", fix="name it .html")
    source = _load_source(load_spec(spec_path), progress)
    planned = plan(spec_path, progress, shapes_only=False, source=source)
    result = _run_verify(source, planned, seed, progress, atol=atol, rtol=rtol, scale_rtol=scale_rtol)
    if html is not None:
        from surgery.emitters.picture.files import write_picture

        _step(progress, f"writing {html}")
        write_picture(Path(html), report_page(planned, planned.report.verify))
    return result


def _load_source(loaded: LoadedSpec, progress: Progress | None) -> Net:
    message = loaded.message
    _step(progress, f"loading the source model of {loaded.path}")
    try:
        return load_source(message.source, loaded.base_dir, name=message.name or None, seed=message.seed)
    except SurgeryError as error:
        error.location = error.location or loaded.locator.section("source", error.subject)
        raise


def _run_verify(source: Net, planned: Plan, seed: int, progress: Progress | None, **tolerance: float):
    """Verify a plan made from ``source``; its figures go into the plan's report."""
    from surgery.change import verify_figures
    from surgery.verify import verify as run_verify

    _step(progress, f"running torch, onnxruntime and the source on seeded inputs (seed {seed})")
    output = planned.spec.message.output
    opset = output.onnx.opset if output.onnx.HasField("opset") else 17
    result = run_verify(source, planned.net, seed=seed, opset=opset, **tolerance)
    planned.report.verify = verify_figures(result, seed)
    return result


# ------------------------------------------------------------ video: split
def split(net: Net) -> tuple[Net, Net]:
    """A clip model with a frozen backbone as ``(backbone, head)`` nets: the backbone an
    image net from one frame to its features ``(N, F)``, the head a net on the features
    ``(N, T, F)``. Emit each with :func:`to_torch` / :func:`save_onnx`.

    Example:
        >>> backbone, head = surgery.split(clip_net)
        >>> head_model = surgery.to_torch(head)          # train this on cached features
    """
    from surgery.emitters.split import backbone_net, head_net

    return backbone_net(net), head_net(net)


def features(model: str | Path | Net, clips_dir: str | Path, out_dir: str | Path, *, batch_frames: int = 512,
             progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Run a clip model's frozen backbone once over every ``*.npy`` clip in ``clips_dir``
    (each ``(T, C, H, W)``) and write ``out_dir/<same name>.npy`` with its features
    ``(T, F)``, each file atomically. ``model``: a spec file or a clip-model net.
    ``progress(done, total, name)`` is called after each clip. Returns the files written.

    Example:
        >>> surgery.features("specs/digits_video.prototxt", "clips/", "feats/")
    """
    import numpy as np
    import torch

    from surgery.emitters.split import backbone_net
    from surgery.errors import ShapeError

    net = model if isinstance(model, Net) else plan(model, shapes_only=False).net
    backbone = backbone_net(net)
    frame_shape = tuple(backbone.input_layers()[0].params["shape"][1:])
    clips = sorted(Path(clips_dir).glob("*.npy"))
    if not clips:
        raise SurgeryError(f"no .npy clips in {str(clips_dir)!r}", fix="save each clip as an (T, C, H, W) .npy array")
    runner = emit_torch(backbone, copy_weights=False).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for done, clip_file in enumerate(clips, 1):
        frames = np.load(clip_file, allow_pickle=False)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != frame_shape:
            raise ShapeError(f"clip {clip_file.name!r} has shape {frames.shape}, expected (T, {', '.join(map(str, frame_shape))})",
                             subject=str(clip_file))
        with torch.no_grad():
            values = torch.cat([runner(torch.from_numpy(np.ascontiguousarray(chunk, np.float32)))
                                for chunk in np.array_split(frames, max(1, -(-len(frames) // batch_frames)))])
        target = out / clip_file.name
        temp = target.with_name(f".{target.name}.partial")
        with open(temp, "wb") as handle:
            np.save(handle, values.numpy())
        temp.replace(target)
        written.append(target)
        if progress is not None:
            progress(done, len(clips), clip_file.name)
    return written


def _onnx_options(onnx: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"keep_train_branches": onnx.keep_train_branches}
    if onnx.HasField("opset"):
        options["opset"] = onnx.opset
    if onnx.HasField("ir_version"):
        options["ir_version"] = onnx.ir_version
    if onnx.HasField("external_data"):
        options["external_data"] = onnx.external_data
    if onnx.dynamic_axis:
        from surgery.emitters.onnx_dynamic import parse_dynamic_axes

        options["dynamic_axes"] = parse_dynamic_axes(onnx.dynamic_axis)
    return options
