"""Every kind of output ``apply`` writes, declared once.

A row of :data:`OUTPUT_KINDS` says, for one field of the spec's ``output { }`` block,
which paths it writes inside ``-o`` (checked before anything is built), how many copies
of the net's weights it holds (the free-space estimate), what it must build before
anything is written (refusing a net it cannot emit), and how it writes. Path safety,
the space estimate, the writers and ``report.json``'s ``files.outputs`` all read this
table, so a new output kind is one row: a test sweeps every field of the schema's
``Output`` message against it.

:func:`write_output_folder` is the one place that turns a plan into the ``-o``
folder: space check, staging folder, every selected kind, the reports, the atomic
publish (see :mod:`surgery.output_folder`).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from surgery import output_folder
from surgery.change import report_html
from surgery.emitters.files import FileLog, write_bytes
from surgery.errors import ModelFormatError, SurgeryError, option
from surgery.interrupts import checkpoint
from surgery.output_folder import MARKER, check_output_path, check_output_paths
from surgery.protos import enum_name

if TYPE_CHECKING:
    from surgery.ir import Net
    from surgery.plans import Plan

Progress = Callable[[str], None]

#: The files of a PyTorch folder (its generated source, its weights, its opaque modules).
TORCH_FOLDER_FILES = ("model.py", "weights.pt", "opaque_modules.pt")
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
#: Names at the top of every output folder that no spec output may take.
RESERVED = (REPORT_JSON, REPORT_HTML, MARKER)


@dataclass(frozen=True)
class OutputPath:
    """One file an output kind writes: its path inside ``-o``, what the spec calls it
    (``output.onnx.path``) and the spec's own value (to locate errors)."""

    path: str
    what: str
    value: str


@dataclass
class Job:
    """What the writers of one run share."""

    plan: Plan
    staging: Path
    log: FileLog
    progress: Progress | None

    def step(self, text: str) -> None:
        checkpoint()  # where a Ctrl-C under the CLI stops the run (see surgery.interrupts)
        if self.progress is not None:
            self.progress(text)

    @property
    def versions(self) -> dict[str, Any]:
        """The spec's ONNX opset / IR version, which every ONNX file of the run follows."""
        onnx = self.plan.spec.message.output.onnx
        return {name: getattr(onnx, name) for name in ("opset", "ir_version") if onnx.HasField(name)}


@dataclass(frozen=True)
class OutputKind:
    """One row of the output table."""

    #: The field of the spec's ``output { }`` block.
    field: str
    #: Written when the spec has no ``output { }`` block at all.
    by_default: bool
    #: Every file it writes, from the field's message.
    paths: Callable[[Any], list[OutputPath]]
    #: Full copies of the net's weights among its files (for the free-space estimate).
    weight_copies: int
    #: Writes the files into the staging folder; gets what ``prepare`` built.
    write: Callable[[Job, Any, Any], None]
    #: Builds what ``write`` needs from the edited net before anything is written, so a
    #: net this kind cannot emit is refused with ``-o`` untouched.
    prepare: Callable[[Net], Any] | None = None


# ----------------------------------------------------------------------- paths
def _torch_folder(folder: str, what: str) -> list[OutputPath]:
    check_output_path(folder, what)
    return [OutputPath(f"{folder}/{name}", what, folder) for name in TORCH_FOLDER_FILES]


def _onnx_file(path: str, what: str) -> list[OutputPath]:
    files = [OutputPath(path, what, path)]
    if path:
        files.append(OutputPath(path + ".data", f"{what} (its external data)", path))
    return files


def _split_part(folder: str, what: str) -> list[OutputPath]:
    files = _torch_folder(folder, what)
    name = PurePosixPath(check_output_path(folder, what)).name
    return files + _onnx_file(f"{folder}/{name}.onnx", f"{what} (its ONNX file)")


# --------------------------------------------------------------------- writers
def _write_torch(job: Job, message: Any, prepared: Any) -> None:
    from surgery.emitters.torch_module import save_torch_folder

    job.step(f"writing the PyTorch model to {message.path}/")
    save_torch_folder(job.plan.net, job.staging / message.path, job.log)


def onnx_options(onnx: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`surgery.emitters.onnx_model.emit_onnx` that an
    ``output { onnx { } }`` block asks for."""
    options: dict[str, Any] = {"keep_train_branches": onnx.keep_train_branches}
    if onnx.adapters:
        options["adapters"] = enum_name(onnx, "adapters")
    for name in ("opset", "ir_version", "external_data"):
        if onnx.HasField(name):
            options[name] = getattr(onnx, name)
    if onnx.dynamic_axis:
        from surgery.emitters.onnx_dynamic import parse_dynamic_axes

        options["dynamic_axes"] = parse_dynamic_axes(onnx.dynamic_axis)
    return options


def _write_onnx(job: Job, message: Any, prepared: Any) -> None:
    from surgery.emitters.onnx_model import emit_onnx
    from surgery.precision import precision_name

    precision = precision_name(message)
    if precision != "FP32":
        from surgery.precision import reduce

        job.step(f"writing {message.path} ({precision}, from the float32 model)")
        reduced = reduce(job.plan.net, message, job.plan.spec.base_dir, onnx_options(message))
        write_bytes(job.staging / message.path, reduced.model.SerializeToString(), job.log)
        return
    job.step(f"writing {message.path}")
    try:
        emit_onnx(job.plan.net, job.staging / message.path, log=job.log, **onnx_options(message))
    except SurgeryError as error:
        if not job.plan.spec.message.HasField("output"):
            error.fix = (error.fix or "") + "; or add `output { pytorch { } }` to the spec to write PyTorch only"
        raise


def _write_caffe(job: Job, message: Any, prepared: Any) -> None:
    from surgery.emitters.caffe import emit_caffe

    job.step(f"writing {message.prototxt} and {message.weights}")
    emit_caffe(job.plan.net, job.staging / message.prototxt, job.staging / message.weights, job.log)


def _prepare_step(net: Net) -> Net:
    from surgery.emitters.step import step_net

    return step_net(net)


def _write_step(job: Job, message: Any, step: Net) -> None:
    from surgery.emitters.onnx_model import emit_onnx
    from surgery.emitters.torch_module import save_torch_folder

    job.step(f"writing the streaming step model: {message.onnx}, {message.pytorch}/")
    emit_onnx(step, job.staging / message.onnx, log=job.log, **job.versions)
    save_torch_folder(step, job.staging / message.pytorch, job.log)


def _prepare_split(net: Net) -> tuple[Net, Net]:
    from surgery.emitters.split import backbone_net, head_net

    return backbone_net(net), head_net(net)


def _write_split(job: Job, message: Any, parts: tuple[Net, Net]) -> None:
    from surgery.emitters.onnx_model import emit_onnx
    from surgery.emitters.torch_module import save_torch_folder

    for part, folder in zip(parts, (message.backbone, message.head)):
        job.step(f"writing the split model's {folder}/")
        save_torch_folder(part, job.staging / folder, job.log)
        emit_onnx(part, job.staging / folder / f"{PurePosixPath(folder).name}.onnx", log=job.log, **job.versions)


def _prepare_peft(net: Net) -> None:
    from surgery.emitters.peft import adapter_config

    adapter_config(net)  # a net without adapters, or with settings one config cannot say: refused now


def _write_peft(job: Job, message: Any, prepared: Any) -> None:
    from surgery.emitters.peft import write_adapter

    job.step(f"writing the adapters in PEFT's format to {message.path}/")
    write_adapter(job.plan.net, job.staging / message.path, job.log)


def _peft_folder(folder: str) -> list[OutputPath]:
    from surgery.emitters.peft import CONFIG, WEIGHTS

    check_output_path(folder, "output.peft.path")
    return [OutputPath(f"{folder}/{name}", "output.peft.path", folder) for name in (CONFIG, WEIGHTS)]


OUTPUT_KINDS: tuple[OutputKind, ...] = (
    OutputKind("pytorch", True, lambda m: _torch_folder(m.path, "output.pytorch.path"), 1, _write_torch),
    OutputKind("onnx", True, lambda m: _onnx_file(m.path, "output.onnx.path"), 1, _write_onnx),
    OutputKind(
        "split",
        False,
        lambda m: _split_part(m.backbone, "output.split.backbone") + _split_part(m.head, "output.split.head"),
        2,
        _write_split,
        _prepare_split,
    ),
    OutputKind(
        "step",
        False,
        lambda m: _onnx_file(m.onnx, "output.step.onnx") + _torch_folder(m.pytorch, "output.step.pytorch"),
        2,
        _write_step,
        _prepare_step,
    ),
    OutputKind(
        "caffe",
        False,
        lambda m: [
            OutputPath(m.prototxt, "output.caffe.prototxt", m.prototxt),
            OutputPath(m.weights, "output.caffe.weights", m.weights),
        ],
        1,
        _write_caffe,
    ),
    OutputKind("peft", False, lambda m: _peft_folder(m.path), 0, _write_peft, _prepare_peft),
)


def selected(spec: Any) -> list[tuple[OutputKind, Any]]:
    """The kinds a spec message asks for, each with its message (no block: the defaults)."""
    block = spec.output
    given = spec.HasField("output")
    return [
        (kind, getattr(block, kind.field))
        for kind in OUTPUT_KINDS
        if (block.HasField(kind.field) if given else kind.by_default)
    ]


def declared_paths(spec: Any) -> list[OutputPath]:
    """Every file ``apply`` writes for the spec besides the reserved names."""
    return [path for kind, message in selected(spec) for path in kind.paths(message)]


def check_paths(spec: Any) -> None:
    """Each output inside ``-o``, apart from the others and from the reserved names
    (a SpecError naming the spec's field otherwise)."""
    check_output_paths(((p.path, p.what, p.value) for p in declared_paths(spec)), RESERVED)


# -------------------------------------------------------------------- the folder
def write_output_folder(
    plan: Plan, target: output_folder.Target, inputs: Future | list[dict[str, Any]], progress: Progress | None = None
) -> list[Path]:
    """Write every output the plan's spec selects into the ``-o`` folder ``target``,
    atomically: built in a staging folder (after a free-space check), then published
    in one step; on any failure the staging folder goes and ``-o`` is as it was.

    ``inputs``: the records of the run's input files (or a future of them, computed
    beside the writing) for ``report.json``. Returns the written files, as paths
    under ``target.path``.
    """
    out = target.path
    kinds = selected(plan.spec.message)
    with plan.spec.located("output"):
        prepared = [kind.prepare(plan.net) if kind.prepare else None for kind, _ in kinds]  # refuse first
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            check_free_space(plan.net, sum(kind.weight_copies for kind, _ in kinds), out.parent)
            staging = output_folder.make_staging(out)
        except OSError as error:
            raise _write_error(error, out) from None
        log = FileLog(exclusive=True)
        try:
            job = Job(plan, staging, log, progress)
            for (kind, message), built in zip(kinds, prepared):
                kind.write(job, message, built)
            _write_reports(job, inputs)
            job.step(f"moving the outputs into {out}")
            output_folder.publish(staging, target)
        except BaseException as error:
            output_folder.remove_output(staging)
            if isinstance(error, OSError):
                raise _write_error(error, out, staging) from None
            raise
    return [out / path.relative_to(staging) for path in log.files]


def _write_reports(job: Job, inputs: Future | list[dict[str, Any]]) -> None:
    """report.html, then report.json with the records of every file written before it."""
    job.step(f"writing {REPORT_HTML}")
    plan, report = job.plan, job.plan.report
    page = report_html(plan.spec.path, plan.source, plan.net, report, report.verify)
    write_bytes(job.staging / REPORT_HTML, page.encode("utf-8"), job.log)
    records = inputs.result() if isinstance(inputs, Future) else inputs
    report.files = {"inputs": records, "outputs": output_folder.output_records(job.log, job.staging)}
    write_bytes(job.staging / REPORT_JSON, report.to_json().encode(), job.log)


def check_free_space(net: Net, weight_copies: int, folder: Path) -> None:
    """Refuse, with the figures, outputs that cannot fit on the disk (a writer that runs
    out of space mid-file fails in ways that do not say so)."""
    weights = sum(blob.numel * blob.itemsize for layer in net.layers() for blob in layer.blobs.values())
    # model.py, report.json, headers; report.html takes about 2 kB a layer (two pictures, a table row)
    needed = weight_copies * weights + (64 << 10) + 4096 * len(net)
    free = shutil.disk_usage(folder).free
    if needed > free:
        from surgery.ir.budget import human_bytes

        raise SurgeryError(
            f"the outputs need about {human_bytes(needed)} and the disk of {str(folder)!r} has "
            f"{human_bytes(free)} free: No space left on device",
            fix=f"free some space there, or write to another disk ({option('-o', 'out_dir')})",
        )


def _write_error(error: OSError, out: Path, staging: Path | None = None) -> SurgeryError:
    """What failed and where, for an OS refusal while writing (a full disk, a read-only
    or forbidden folder); the partial output is already gone. A failure on a file outside
    the output's folders is a file being read (a weight read on first use), and is said
    to be one."""
    where = error.filename or out
    if staging is not None and error.filename and not any(_inside(error.filename, f) for f in (out, staging)):
        return ModelFormatError(
            f"cannot read {str(error.filename)!r}: {error.strerror or error}; nothing was written",
            fix="check that the model's files are all there and readable",
        )
    fixes = {
        errno.ENOSPC: f"free some space there, or write to another disk ({option('-o', 'out_dir')})",
        errno.EROFS: f"choose an {option('-o', 'out_dir')} folder on a writable disk",
        errno.EACCES: f"choose an {option('-o', 'out_dir')} folder you may write to",
        errno.EPERM: f"choose an {option('-o', 'out_dir')} folder you may write to",
    }
    return SurgeryError(
        f"cannot write the outputs to {str(out)!r}: {error.strerror or error} ({where}); nothing was written",
        fix=fixes.get(error.errno or 0, f"check the {option('-o', 'out_dir')} folder and its disk"),
    )


def _inside(path: str | bytes | int, folder: Path) -> bool:
    return isinstance(path, str) and Path(path).resolve().is_relative_to(folder.resolve())


def output_fields() -> Iterable[str]:
    """The fields of the schema's ``Output`` message (every one must have a row)."""
    from surgery.spec import spec_class

    return (field.name for field in spec_class("Output").DESCRIPTOR.fields)


__all__ = [
    "OUTPUT_KINDS",
    "RESERVED",
    "OutputKind",
    "OutputPath",
    "check_free_space",
    "check_paths",
    "declared_paths",
    "onnx_options",
    "output_fields",
    "selected",
    "write_output_folder",
]
