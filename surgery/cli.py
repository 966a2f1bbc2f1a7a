"""The ``surgery`` command.

    surgery inspect MODEL           the layers, shapes and params a spec can name
    surgery plan SPEC               validate a spec and print its report; write nothing
    surgery apply SPEC -o DIR       write the edited model (torch folder, model.onnx, report.json)
    surgery verify SPEC             emitted torch vs emitted ONNX (onnxruntime) vs the source
    surgery draw SPEC -o FILE       the change as a picture (.svg, .png) or report page (.html)

User errors print one message (``file:line:col: what`` and the fix) and exit with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from surgery.errors import SurgeryError, SurgeryNote, cli_wording
from surgery.importers.trust import trusting_code
from surgery.interrupts import StopOnSignal
from surgery.tolerances import ATOL, RTOL, SCALE_RTOL

EXIT_USER_ERROR = 2


class _Progress:
    """Step lines on stderr with the time since start (silent with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.2f}s] {text}", file=sys.stderr, flush=True)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224")
    return shape


def _is_spec_file(path: Path) -> bool:
    """A spec names a `source` (and edits); a Caffe prototxt has layers instead: told
    apart by content, whatever the file is called."""
    from surgery.spec.loader import sniff_text

    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return True
    if suffix == ".onnx" or not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(1 << 16)
    return b"\0" not in head and sniff_text(head.decode("utf-8", errors="replace"))[0] == "spec"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from surgery import api
    from surgery.report import format_modules

    if _is_spec_file(Path(args.model)):
        from surgery.importers.sources import load_source
        from surgery.spec import load_spec

        loaded = load_spec(args.model)
        with loaded.located("source"):  # point at the spec's source block, as plan does
            net = load_source(
                loaded.message.source,
                loaded.base_dir,
                name=loaded.message.name or None,
                shapes_only=True,
                seed=loaded.message.seed,
            )
    else:
        net = api.load(args.model, args.input_shape, weights=args.weights, shapes_only=True)
    print(api.report(net).format_table(only_params=args.params_only))
    modules = format_modules(net)
    if modules and not args.params_only:
        print("\n" + modules)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from surgery import api

    planned = api.plan(args.spec, progress=_Progress(args.quiet))
    print(planned.report.summary() if args.quiet else planned.report.format_table(only_params=args.params_only))
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from surgery import api

    progress = _Progress(args.quiet)
    result = api.apply(
        args.spec,
        args.out,
        force=args.force,
        force_any=args.force_any,
        progress=progress,
        verify=args.verify,
        **_verify_args(args),
    )
    if not args.quiet:
        print(result.report.format_table(only_params=args.params_only))
    print(f"wrote {result.out_dir}/: " + ", ".join(str(f.relative_to(result.out_dir)) for f in result.files))
    if result.verified is not None:
        from surgery.verify import format_verify

        print(format_verify(result.verified))
        return 0 if result.verified.ok else 1
    return 0


def _cmd_draw(args: argparse.Namespace) -> int:
    from surgery import api

    out = api.draw(args.spec, args.out, show_all=args.all, progress=_Progress(args.quiet))
    print(f"wrote {out}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from surgery import api

    print(api.fetch(args.spec, progress=not args.quiet))
    return 0


def _iterations(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of iterations like 0,5000,9999") from None
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: iterations count from 0")
    return values


def _cmd_solver(args: argparse.Namespace) -> int:
    from surgery.solver.caffe import describe, read_solver, solver_settings
    from surgery.solver.rates import caffe_rate

    message, text = read_solver(args.solver)
    settings = solver_settings(message, text)
    for line in describe(settings):
        print(line)
    for iteration in args.at:
        rate = caffe_rate(settings, iteration)
        why = (
            ""
            if math.isfinite(rate)
            else " (Caffe's float arithmetic gives the same: an update there breaks the weights)"
        )
        print(f"rate at iteration {iteration}: {rate:.9g}{why}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from surgery import api
    from surgery.verify import format_verify

    result = api.verify(args.spec, progress=_Progress(args.quiet), html=args.html, **_verify_args(args))
    print(format_verify(result))
    return 0 if result.ok else 1


def _cmd_features(args: argparse.Namespace) -> int:
    from surgery import api
    from surgery.video.feature_cache import torchrun_shard

    rank = torchrun_shard()
    prefix = f"[rank {rank.index}/{rank.count}] " if rank is not None else ""

    def bar(done: int, total: int, name: str) -> None:
        if not args.quiet:
            filled = done * 30 // total
            end = "\n" if done == total else ""
            print(
                f"\r{prefix}features [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {name}",
                end=end,
                file=sys.stderr,
                flush=True,
            )

    finished = [0]

    def step(done: int, total: int, name: str) -> None:
        finished[0] = done
        bar(done, total, name)

    # What a Ctrl-C or SIGTERM leaves: whole feature files of the clips finished, which a
    # rerun skips (main prints this instead of its generic line).
    args.interrupted = lambda: (
        f"interrupted; {args.out} keeps the whole feature files of the clips finished before the signal "
        f"(up to {finished[0]} of this worker's), never a partial one; run the same command again to resume"
    )
    run = api.features(
        args.spec,
        args.clips,
        args.out,
        frames=args.frames,
        stride=1 if args.every_frame else args.stride,
        pad=args.pad,
        shard=args.shard,
        batch_frames=args.batch_frames,
        device=args.device,
        progress=step,
        force=args.force,
    )
    print(f"{prefix}{run.summary()}")
    for record in run.failed:  # last: what the user must act on
        print(f"{prefix}failed: {record['source']}: {record['error']}", file=sys.stderr)
    if run.failed and rank is not None and not args.strict:
        # A worker exiting 1 makes torchrun print its own ChildFailedError traceback over
        # this summary: the failures are in the manifest, and --strict makes them fatal.
        print(f"{prefix}{len(run.failed)} clips failed (listed in manifest.json); --strict exits 1", file=sys.stderr)
        return 0
    return 1 if run.failed else 0


def _cmd_stream(args: argparse.Namespace) -> int:
    import numpy as np

    from surgery.runner import plan
    from surgery.video.stream import class_names, stream

    net = plan(args.spec, shapes_only=False).net
    names: list[str] | None = None

    def show(index: int, scores: np.ndarray) -> None:
        nonlocal names
        if args.quiet or index % args.every:
            return
        if names is None:
            names = class_names(net, len(scores)) or [str(i) for i in range(len(scores))]
        best = np.argsort(-scores)[: args.top]
        print(f"frame {index}: " + "  ".join(f"{names[i]} {scores[i]:.3f}" for i in best), flush=True)

    run = stream(
        net, args.source, use_onnx=args.onnx, weights=args.weights, limit=args.limit, device=args.device, on_frame=show
    )
    print(run.summary())
    if run.stopped is not None:  # the frames before it were scored and printed
        print(f"error: {run.stopped}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of frames, classes, rows)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _verify_options(parser: argparse.ArgumentParser) -> None:
    """The options of a verify run (``verify``, and ``apply --verify``)."""
    parser.add_argument("--seed", type=int, default=0, help="seed of verify's random inputs (default 0)")
    parser.add_argument(
        "--atol",
        type=float,
        default=ATOL,
        help=f"allclose rule: |a-b| <= atol + rtol*|b| per element (default {ATOL:g})",
    )
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"allclose rule's relative part (default {RTOL:g})")
    parser.add_argument(
        "--scale-rtol",
        type=float,
        default=SCALE_RTOL,
        help=f"scale rule: max |a-b| <= scale-rtol * max |b| (default {SCALE_RTOL:g}; either rule passes a comparison)",
    )
    parser.add_argument(
        "--device", default="cpu", help="where the torch side runs: cpu (default) or cuda; on a GPU at fp32, TF32 off"
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="let onnxruntime's CUDA provider run in TF32, as "
        "onnxruntime-gpu does by default (verify pins it to fp32 otherwise)",
    )


def _verify_args(args: argparse.Namespace) -> dict:
    return {
        "seed": args.seed,
        "atol": args.atol,
        "rtol": args.rtol,
        "scale_rtol": args.scale_rtol,
        "device": args.device,
        "tf32": args.tf32,
    }


def _version() -> str:
    """The installed distribution's version (``surgery-nets`` on PyPI), without importing
    anything heavy."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("surgery-nets")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="Declarative model surgery.")
    parser.add_argument("--version", action="version", version=f"surgery {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="list layers, shapes and params (reads no weights)")
    inspect.add_argument(
        "model",
        help="a spec file, an .onnx file, a Caffe .prototxt, a Keras .keras / .h5 "
        "file, or a torch factory 'package.module:callable'",
    )
    inspect.add_argument(
        "--input-shape",
        type=_shape,
        help="input shape, e.g. 1,3,224,224 (torch models; 1,224,224,3 for Keras files with unknown axes)",
    )
    inspect.add_argument("--weights", help="state_dict (torch) or .caffemodel (Caffe)")
    inspect.add_argument("--params-only", action="store_true", help="only layers with parameters")
    inspect.set_defaults(run=_cmd_inspect)

    plan = sub.add_parser("plan", help="validate a spec and print its report; writes nothing")
    plan.add_argument("spec")
    plan.add_argument("-q", "--quiet", action="store_true", help="no progress, and only the one-line summary")
    plan.add_argument("--params-only", action="store_true", help="only layers with parameters")
    plan.set_defaults(run=_cmd_plan)

    apply = sub.add_parser("apply", help="apply a spec and write the outputs")
    apply.add_argument("spec")
    apply.add_argument("-o", "--out", required=True, help="output folder (written atomically)")
    apply.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output folder written by surgery (it holds a .surgery-output file)",
    )
    apply.add_argument(
        "--force-any", action="store_true", help="replace an existing output folder (or file) whatever it holds"
    )
    apply.add_argument("-q", "--quiet", action="store_true")
    apply.add_argument("--params-only", action="store_true", help="only layers with parameters in the table")
    apply.add_argument(
        "--verify",
        action="store_true",
        help="also run verify and put its figures in the reports; "
        "exit 1 when a comparison fails (the outputs are written either way)",
    )
    _verify_options(apply)
    apply.set_defaults(run=_cmd_apply)

    draw = sub.add_parser("draw", help="draw the change: the source beside the edited net (reads no weights)")
    draw.add_argument("spec")
    draw.add_argument("-o", "--out", required=True, help="the picture: .svg, .png, or .html (the report page)")
    draw.add_argument("--all", action="store_true", help="draw every layer (runs of unchanged layers fold by default)")
    draw.add_argument("-q", "--quiet", action="store_true")
    draw.set_defaults(run=_cmd_draw)

    fetch = sub.add_parser(
        "fetch",
        help="download the pretrained weights a spec names into the cache their library reads (torch's for "
        "torchvision, Hugging Face's for timm), with the hash check (apply never downloads)",
    )
    fetch.add_argument("spec")
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(run=_cmd_fetch)

    solver = sub.add_parser(
        "solver",
        help="say what a Caffe solver.prototxt means: the update, the schedule, the rate where it changes",
    )
    solver.add_argument("solver", help="a Caffe solver.prototxt")
    solver.add_argument(
        "--at", type=_iterations, default=(), help="also the rate at these iterations (e.g. 0,5000,9999)"
    )
    solver.set_defaults(run=_cmd_solver)

    verify = sub.add_parser(
        "verify", help="compare emitted torch, emitted ONNX (onnxruntime) and the source; exit 1 above tolerance"
    )
    verify.add_argument("spec")
    _verify_options(verify)
    verify.add_argument("--html", help="also write the report page with these figures (e.g. DIR/report.html)")
    verify.add_argument("-q", "--quiet", action="store_true")
    verify.set_defaults(run=_cmd_verify)

    features = sub.add_parser(
        "features",
        help="run a clip model's frozen backbone over a folder of videos (or image folders, or (T, C, H, W) "
        ".npy arrays) and write each clip's features (T, F); resumable, shardable, runs under torchrun",
        description="Each clip's features go to OUT/<clip>.npy (atomically); a rerun skips clips already done. "
        "Video frames are decoded with PyAV and preprocessed as the spec's source says (surgery inspect shows "
        "it). Many workers: torchrun --nproc_per_node=N --no-python surgery features ..., or --shard K/N on "
        "each machine; OUT/manifest.json lists every clip once all are done. Exit 1 when some clips failed "
        "(each is named; the others are written).",
    )
    features.add_argument("spec")
    features.add_argument("clips", help="folder of clips: video files, folders of images, .npy arrays")
    features.add_argument("-o", "--out", required=True, help="folder for the feature files (<clip>.npy)")
    sampling = features.add_mutually_exclusive_group()
    sampling.add_argument("--frames", type=int, help="T frames uniformly over each video (default: the spec's T)")
    sampling.add_argument("--stride", type=int, help="every S-th frame from the first")
    sampling.add_argument("--every-frame", action="store_true", help="every frame (--stride 1)")
    features.add_argument(
        "--pad",
        choices=("last", "loop", "stretch", "refuse"),
        default="last",
        help="a video shorter than T: repeat the last frame (default), start over, repeat frames evenly, or fail it",
    )
    features.add_argument("--shard", help="K/N: this worker's share of the clips (K from 0); torchrun sets it")
    features.add_argument("--batch-frames", type=_positive, default=64, help="frames per backbone call (memory bound)")
    features.add_argument("--device", help="where the backbone runs (default: the rank's GPU when there is one)")
    features.add_argument("-q", "--quiet", action="store_true")
    features.add_argument(
        "--force",
        action="store_true",
        help="-o holds features another model, preprocessing or sampling made: recompute every clip",
    )
    features.add_argument(
        "--strict",
        action="store_true",
        help="under torchrun, exit 1 when a clip fails (by default workers exit 0 and the failures are "
        "listed in the manifest and printed last)",
    )
    features.set_defaults(run=_cmd_features)

    stream = sub.add_parser(
        "stream",
        help="score a video frame by frame with the spec's streaming step model: top-k classes per frame and "
        "the sustained frames per second",
        description="The scores after frame t are the clip model's for frames 1..t. SOURCE is a video file, or "
        "a camera number N (/dev/videoN through FFmpeg's v4l2, Linux).",
    )
    stream.add_argument("spec")
    stream.add_argument("source", help="a video file, or a camera number")
    stream.add_argument("--every", type=_positive, default=1, help="print every k-th frame (default: every frame)")
    stream.add_argument("--top", type=_positive, default=3, help="classes printed per frame (default 3)")
    stream.add_argument("--onnx", action="store_true", help="run the step ONNX in onnxruntime (CUDA when it starts)")
    stream.add_argument(
        "--weights", help="trained values: a state_dict of the emitted clip model or of its head (torch.save)"
    )
    stream.add_argument("--limit", type=_positive, help="stop after this many frames (a camera never ends)")
    stream.add_argument("--device", default="cpu", help="where the PyTorch step model runs (default cpu)")
    stream.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    stream.set_defaults(run=_cmd_stream)
    for command in ("inspect", "plan", "apply", "draw", "fetch", "verify", "features", "stream"):
        sub.choices[command].add_argument(
            "--trust-code",
            action="store_true",
            help="let the spec's torch factory run code from any module or file (by default only torchvision, "
            "timm, transformers, surgery and .py files under the spec's folder run)",
        )
    return parser


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Notes as one line; other warnings as Python prints them."""
    if issubclass(category, SurgeryNote):
        print(f"note: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run one ``surgery`` command; returns the exit code (2 for a user error, 130 after
    SIGINT, 143 after SIGTERM).

    ``exiting``: the process ends right after (the console script): SIGINT and SIGTERM
    stay ignored from the end of the run on, so a signal during the interpreter's
    shutdown cannot change an exit code that already stands for a finished run.
    """
    args = build_parser().parse_args(argv)
    stop = StopOnSignal()  # a signal is recorded; the run stops at its next checkpoint
    try:
        stop.arm()
        code = _run(args)
        stop.disarm()
    except KeyboardInterrupt:  # raised by a checkpoint, at most once
        said = getattr(args, "interrupted", None)
        print(
            said() if said is not None else "interrupted; the output folder is as it was, or complete", file=sys.stderr
        )
        code = 128 + (stop.signum or signal.SIGINT)
    finally:
        stop.close(ignore=exiting)
    return code


def console() -> None:
    """The ``surgery`` console script (and ``python -m surgery.cli``)."""
    sys.exit(main(exiting=True))


def _run(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SurgeryNote)
            warnings.showwarning = _show_note
            with trusting_code(getattr(args, "trust_code", False)), cli_wording():
                return args.run(args)
    except SurgeryError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    console()
