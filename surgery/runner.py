"""Running a spec: plan it in memory, apply it to an output folder, verify it, draw it.

These are the spec-file front doors behind :mod:`surgery.api` and the CLI; the
scripted edits (``surgery.classifier(net, ...)``) live in :mod:`surgery.api` itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from surgery import output_folder, outputs
from surgery.edits import run_edit
from surgery.errors import SpecError
from surgery.importers.sources import load_source
from surgery.importers.trust import trusting_code
from surgery.interrupts import checkpoint
from surgery.ir import Net
from surgery.ops.base import Action, OpContext
from surgery.plans import ApplyResult, Plan
from surgery.report import build_report
from surgery.solver.caffe import spec_solver
from surgery.spec import LoadedSpec, load_spec
from surgery.spec.loader import spec_to_dict
from surgery.tolerances import ATOL, RTOL, SCALE_RTOL

Progress = Callable[[str], None]


def _step(progress: Progress | None, text: str) -> None:
    checkpoint()  # where a Ctrl-C under the CLI stops the run (see surgery.interrupts)
    if progress is not None:
        progress(text)


def plan(
    spec_path: str | Path,
    progress: Progress | None = None,
    *,
    shapes_only: bool = True,
    source: Net | None = None,
    trust_code: bool = False,
) -> Plan:
    """Load the spec and its source, apply every edit in memory, build the report.

    Writes nothing, and with ``shapes_only`` (the default) reads no weights: the plan's
    net then has names, shapes and new-layer weights only. ``source``: edit a copy of
    this already loaded net instead of loading the spec's source. Errors carry the
    spec's ``file:line:col``. ``trust_code``: the spec's torch factory may come from any
    module or file (by default only torchvision, timm, transformers, surgery and files
    under the spec's folder run; see :mod:`surgery.importers.trust`); likewise for
    :func:`apply`, :func:`verify`, :func:`draw` and :func:`fetch`.
    """
    with trusting_code(trust_code):
        return _plan(load_spec(spec_path), progress, shapes_only=shapes_only, source=source)


def _plan(loaded: LoadedSpec, progress: Progress | None, *, shapes_only: bool, source: Net | None = None) -> Plan:
    message = loaded.message
    _check_output_versions(loaded)
    solver = spec_solver(loaded)  # a bad solver is refused before any model loads
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if source is not None:
        net = source.copy()
    else:
        _step(progress, f"loading the source model of {loaded.path}")
        with loaded.located("source"):
            net = load_source(
                message.source, loaded.base_dir, name=message.name or None, shapes_only=shapes_only, seed=message.seed
            )
    timings["load"] = time.perf_counter() - start
    before = net.skeleton()
    actions: list[Action] = []
    ctx = OpContext(seed=message.seed, base_dir=loaded.base_dir, shapes_only=shapes_only)
    for index, item in enumerate(message.edit):
        op = item.WhichOneof("op")
        if op is None:
            raise SpecError("empty edit", location=loaded.locator.edit(index), fix="put one operation inside edit { }")
        _step(progress, f"edit {index + 1}/{len(message.edit)}: {op}")
        with loaded.located(index):
            done = run_edit(net, op, getattr(item, op), ctx)
        # Each row of the report points at the spec line that did it.
        actions += [dataclasses.replace(a, where=loaded.locator.find(index, a.was or a.layer)) for a in done]
    timings["edits"] = time.perf_counter() - start - timings["load"]
    net.solver = solver
    if message.output.HasField("onnx"):
        from surgery.precision import check_spec

        with loaded.located("output"):
            check_spec(net, message.output.onnx, loaded.base_dir)
    return Plan(loaded, net, build_report(net, actions, spec_to_dict(message)), source=before, timings=timings)


def fetch(spec_path: str | Path, progress: bool = True, *, trust_code: bool = False) -> str:
    """Download the pretrained weights a spec's source names into the cache their library
    reads (torch's; Hugging Face's for timm and for an ``hf`` source), checking their
    hash; what was done, in words. ``apply`` itself never downloads."""
    from surgery.importers.pretrained import fetch as fetch_file
    from surgery.importers.sources import torch_pretrained

    with trusting_code(trust_code):
        loaded = load_spec(spec_path)
        source = loaded.message.source
        if source.WhichOneof("format") == "hf":
            from surgery.importers.hf import fetch as fetch_hf

            with loaded.located("source"):
                return fetch_hf(source.hf, progress=progress)
        if source.WhichOneof("format") != "torch":
            return "nothing to fetch: the spec's source is not a torch factory or a Hugging Face model"
        with loaded.located("source"):
            t = source.torch
            cached = torch_pretrained(t.factory, t.kwargs, t.pretrained, t.weights, loaded.base_dir)[2]
            if cached is None:
                return "nothing to fetch: the source names no pretrained weights"
            if fetch_file(cached, progress=progress):
                return f"fetched {cached.name}: {cached.path}"
        return f"{cached.name} is in the cache already (hash checked): {cached.path}"


def _check_output_versions(loaded: LoadedSpec) -> None:
    """The ONNX opset / IR version the spec asks for, against what is installed."""
    onnx = loaded.message.output.onnx
    if not (onnx.HasField("opset") or onnx.HasField("ir_version")):
        return
    from surgery.emitters.onnx_model import check_versions

    with loaded.located("output"):
        check_versions(
            onnx.opset if onnx.HasField("opset") else None, onnx.ir_version if onnx.HasField("ir_version") else None
        )


def apply(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    force_any: bool = False,
    progress: Progress | None = None,
    verify: bool = False,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
    scale_rtol: float = SCALE_RTOL,
    device: str = "cpu",
    tf32: bool = False,
    trust_code: bool = False,
) -> ApplyResult:
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
            ``rtol``, ``scale_rtol``, torch on ``device``, ONNX in TF32 with ``tf32``) and
            put its figures in ``report.json`` and ``report.html``; the outputs are
            written either way, and ``result.verified.ok`` says whether it passed.
        trust_code: the spec's factory may run code from any module or file (see :func:`plan`).

    Example:
        >>> result = surgery.apply("specs/digits_parity.prototxt", "out/digits_parity")
        >>> print(result.report.format_table())
    """
    with trusting_code(trust_code):
        out = output_folder.output_path(out_dir)
        if verify:
            from surgery.verify import torch_device

            torch_device(device)  # a GPU asked for and absent: refused before anything else
        output_folder.clean_stale(out)
        loaded = load_spec(spec_path)
        with loaded.located("output"):
            outputs.check_paths(loaded.message)
        inputs = output_folder.input_files(loaded)
        target = output_folder.check_target(out, inputs, force=force, force_any=force_any)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgery-hash") as pool:
            input_records = pool.submit(output_folder.file_records, inputs, loaded.base_dir)  # beside the work
            verified = None
            if verify:
                source = _load_source(loaded, progress)
                planned = _plan(loaded, progress, shapes_only=False, source=source)
                verified = _run_verify(
                    source,
                    planned,
                    seed,
                    progress,
                    atol=atol,
                    rtol=rtol,
                    scale_rtol=scale_rtol,
                    device=device,
                    tf32=tf32,
                )
            else:
                planned = _plan(loaded, progress, shapes_only=False)
            timings = dict(planned.timings)
            start = time.perf_counter()
            files = outputs.write_output_folder(planned, target, input_records, progress)
        timings["write"] = time.perf_counter() - start
        shown = Path(out_dir)
        return ApplyResult(shown, [shown / path.relative_to(out) for path in files], planned.report, timings, verified)


def draw(
    spec_path: str | Path,
    out_path: str | Path,
    *,
    show_all: bool = False,
    progress: Progress | None = None,
    trust_code: bool = False,
) -> Path:
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
    with trusting_code(trust_code):
        from surgery.change import change_svg
        from surgery.emitters.picture.files import write_picture

        out = Path(out_path)
        kind = out.suffix.lower()
        if kind not in (".svg", ".png", ".html"):
            raise SpecError(
                f"cannot draw to {str(out)!r}: unknown picture type {kind or '(none)'!r}",
                fix="name the output .svg, .png or .html",
            )
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


def verify(
    spec_path: str | Path,
    *,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
    scale_rtol: float = SCALE_RTOL,
    progress: Progress | None = None,
    html: str | Path | None = None,
    device: str = "cpu",
    tf32: bool = False,
    trust_code: bool = False,
):
    """Apply a spec in memory and compare emitted torch, emitted ONNX (onnxruntime) and
    the source model on the same seeded inputs. Returns a
    :class:`surgery.verify.VerifyResult` (``.ok``, ``.comparisons``, ``.provider``); see
    :class:`surgery.verify.Tolerance` for ``atol`` / ``rtol`` / ``scale_rtol``.

    ``device``: where the torch side runs (``cpu``, ``cuda``; at fp32 with TF32 off).
    ``tf32``: onnxruntime's CUDA provider runs in TF32, as onnxruntime-gpu does by
    default (otherwise verify pins it to fp32).

    ``html``: also write the report page, with these figures, to that ``.html`` file
    (atomically; e.g. over the ``report.html`` an earlier ``apply`` wrote)."""
    with trusting_code(trust_code):
        if html is not None and Path(html).suffix.lower() != ".html":
            raise SpecError(f"cannot write the report page to {str(html)!r}", fix="name it .html")
        from surgery.verify import torch_device

        torch_device(device)  # a GPU asked for and absent: refused before any loading
        source = _load_source(load_spec(spec_path), progress)
        planned = plan(spec_path, progress, shapes_only=False, source=source)
        result = _run_verify(
            source, planned, seed, progress, atol=atol, rtol=rtol, scale_rtol=scale_rtol, device=device, tf32=tf32
        )
        if html is not None:
            from surgery.emitters.picture.files import write_picture

            _step(progress, f"writing {html}")
            write_picture(Path(html), report_page(planned, planned.report.verify))
            _record_rewrite(Path(html))
        return result


def _record_rewrite(page: Path) -> None:
    """A report page rewritten inside an apply's output folder: the ``report.json`` beside
    it lists that file's sha256 and size, which are updated to the new page's (a
    ``sha256sum`` check of the folder must still agree with its report)."""
    import json

    from surgery.emitters.files import sha256_file, write_bytes

    record_file = page.parent / "report.json"
    if not record_file.is_file():
        return
    try:
        report = json.loads(record_file.read_text())
        records = report["files"]["outputs"]
    except (ValueError, KeyError, TypeError):
        return  # not a report of ours: nothing to keep in step
    entry = next((r for r in records if isinstance(r, dict) and r.get("path") == page.name), None)
    if entry is None:
        return
    entry["sha256"], entry["size"] = sha256_file(page)
    write_bytes(record_file, (json.dumps(report, indent=2) + "\n").encode())


def _load_source(loaded: LoadedSpec, progress: Progress | None) -> Net:
    message = loaded.message
    _step(progress, f"loading the source model of {loaded.path}")
    with loaded.located("source"):
        return load_source(message.source, loaded.base_dir, name=message.name or None, seed=message.seed)


def _run_verify(source: Net, planned: Plan, seed: int, progress: Progress | None, **options: Any):
    """Verify a plan made from ``source``; its figures go into the plan's report."""
    from surgery.change import verify_figures
    from surgery.emitters.onnx_model import DEFAULT_OPSET  # verify imports onnx anyway
    from surgery.verify import verify as run_verify

    _step(progress, f"running torch, onnxruntime and the source on seeded inputs (seed {seed})")
    output = planned.spec.message.output
    opset = output.onnx.opset if output.onnx.HasField("opset") else DEFAULT_OPSET
    result = run_verify(source, planned.net, seed=seed, opset=opset, **options)
    if output.HasField("onnx") and output.onnx.precision:
        result.precision = _check_precision(planned, seed, progress)
    planned.report.verify = verify_figures(result, seed)
    return result


def _check_precision(planned: Plan, seed: int, progress: Progress | None) -> dict[str, Any]:
    """The spec's reduced-precision ONNX file against the float32 model it comes from."""
    from surgery.outputs import onnx_options
    from surgery.precision import check_inputs, compare, reduce

    message, base = planned.spec.message.output.onnx, planned.spec.base_dir
    with planned.spec.located("output"):
        reduced = reduce(planned.net, message, base, onnx_options(message))
        inputs, source = check_inputs(planned.net, message, base, reduced, seed)
    _step(progress, f"comparing the {reduced.precision} file with float32 on {len(inputs)} inputs")
    return compare(reduced, inputs, source, message.agreement)
