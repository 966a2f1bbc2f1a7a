"""Cache a clip model's backbone features over a folder of clips, on one process or many.

Each clip's features ``(T, F)`` go to ``OUT/<clip name>.npy``, written atomically, so a
crash leaves whole files or none and a rerun skips what is done (resume) and redoes only
missing or unreadable outputs. The work splits over workers by the sorted clip list
(worker K of N takes clips K, K+N, ...): under ``torchrun`` (its RANK / WORLD_SIZE, a
gloo group for the barrier; worker K's backbone on GPU LOCAL_RANK modulo the GPUs there
are, so several workers may share one) or by ``--shard K/N`` on separate machines. Each
worker appends what it did to ``OUT/.surgery-features/part-K-of-N.jsonl``; once every clip
has a record, ``OUT/manifest.json`` lists them all (clip, frames read, shape, sha256).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgery.emitters.files import sha256_file
from surgery.emitters.split import backbone_net
from surgery.errors import SurgeryError
from surgery.interrupts import checkpoint
from surgery.ir import Net
from surgery.preprocess import Preprocess
from surgery.video.decode import FEATURES_STATE, Clip, ClipError, ClipReader, Sampling, find_clips
from surgery.video.fingerprint import check as check_fingerprint
from surgery.video.fingerprint import fingerprint

STATE_DIR = FEATURES_STATE
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (K from 0 to N-1)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise SurgeryError(f"--shard {text!r} is not K/N", fix="write e.g. --shard 0/4 (shards 0 to 3)") from None
        shard = cls(index, count)
        shard.check()
        return shard

    def check(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise SurgeryError(
                f"shard {self.index}/{self.count} is out of range", fix=f"K runs from 0 to N-1 (0/{max(self.count, 1)})"
            )

    def take(self, clips: list[Clip]) -> list[Clip]:
        return clips[self.index :: self.count]

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"


@dataclass
class FeaturesRun:
    """What one worker did: clip records (``done`` this run, ``skipped`` as already
    done, ``failed`` with the reason) and where the manifest is, once complete."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None
    #: clips of the whole list still without a record (other shards not finished)
    waiting: int = 0
    #: frames read this run, and the seconds its clips took (planning and loading left out)
    frames: int = 0
    seconds: float = 0.0

    @property
    def written(self) -> list[Path]:
        return [Path(record["path"]) for record in self.done]

    def summary(self) -> str:
        rate = f", {self.frames / self.seconds:.0f} frames/s" if self.seconds > 0 and self.frames else ""
        text = f"{len(self.done)} done, {len(self.skipped)} skipped (already done), {len(self.failed)} failed{rate}"
        if self.manifest is not None:
            text += f"; manifest {self.manifest}"
        elif self.waiting:
            text += f"; {MANIFEST} waits for {self.waiting} clips of other shards"
        return text


def torchrun_shard() -> Shard | None:
    """The shard ``torchrun`` gives this process (RANK / WORLD_SIZE), or None outside it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        shard = Shard(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        shard.check()
        return shard
    return None


def extract(
    model: str | Path | Net,
    clips_dir: str | Path,
    out_dir: str | Path,
    *,
    sampling: Sampling | None = None,
    pad: str = "last",
    shard: Shard | None = None,
    batch_frames: int = 64,
    device: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    force: bool = False,
) -> FeaturesRun:
    """Run a clip model's frozen backbone over every clip under ``clips_dir`` and write
    ``out_dir/<clip>.npy`` with its features ``(T, F)``.

    Args:
        model: a spec file or a clip-model net; its preprocessing decodes the frames.
        sampling: which frames (default: the clip model's frame count, uniformly).
        pad: the pad rule of that default sampling.
        shard: this worker's share (default: torchrun's RANK / WORLD_SIZE, else all).
        batch_frames: frames per backbone call (memory is bounded by it).
        device: where the backbone runs (default: this rank's GPU when there is one).
        progress: ``progress(done, total, name)`` after each clip of this worker.
        on_failure: ``on_failure(clip, reason)`` when a clip cannot be read.
        force: the folder holds features made by another model, preprocessing or
            sampling: remove them and recompute every clip (otherwise refused).

    Returns:
        The records of what this worker did; unreadable clips are in ``failed``, never raised.
    """
    if batch_frames < 1:
        raise SurgeryError(f"batch_frames must be at least 1, got {batch_frames}")
    net = clip_net(model)
    spec_name = None if isinstance(model, Net) else str(model)
    backbone = backbone_net(net)
    frame_shape = tuple(backbone.input_layers()[0].params["shape"][1:])
    preprocess = backbone.preprocess or net.preprocess
    sampling = sampling or Sampling(frames=_clip_frames(net), pad=pad)
    out = Path(out_dir)
    _check_out(out, Path(clips_dir))
    all_clips = find_clips(clips_dir, skip=out)
    from_torchrun = shard is None and torchrun_shard() is not None
    shard = shard or torchrun_shard() or Shard()
    state = out / STATE_DIR
    prints = fingerprint(backbone, preprocess, sampling)
    writer = not from_torchrun or shard.index == 0
    if check_fingerprint(state, prints, has_outputs=bool(_records(state)), force=force, writer=writer) and writer:
        _start_over(out, state, prints)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SurgeryError(f"cannot make the output folder {str(out)!r}: {error.strerror}") from None
    group = _Group.start(out, shard) if from_torchrun else None
    runner, torch_device = _runner(backbone, device, shard if from_torchrun else None)
    part = state / f"part-{shard.label}.jsonl"
    mine = shard.take(all_clips)
    run = FeaturesRun()
    start = time.perf_counter()  # the rate counts the clips' work: decode, preprocess, backbone, write
    for done, clip in enumerate(mine, 1):
        checkpoint()
        target = out / f"{clip.name}.npy"
        if _complete(target, sampling, clip.kind):
            run.skipped.append({"clip": clip.name, "path": str(target)})
        else:
            record = _one_clip(clip, target, runner, torch_device, preprocess, frame_shape, sampling, batch_frames)
            if "error" in record:
                run.failed.append(record)
                if on_failure is not None:
                    on_failure(clip.name, record["error"])
            else:
                run.done.append(record)
                run.frames += record["frames_read"]
            _append(part, record)
        if progress is not None:
            progress(done, len(mine), clip.name)
    run.seconds = time.perf_counter() - start
    if group is not None:
        group.barrier()
    if group is None or shard.index == 0:
        run.manifest, run.waiting = _write_manifest(out, all_clips, sampling, preprocess, spec_name)
    if group is not None:
        group.close()
    return run


def _start_over(out: Path, state: Path, prints: dict[str, str]) -> None:
    """Remove what earlier runs wrote (the features their records name, the manifest, the
    records), keeping the new fingerprint: ``--force`` over features another model made."""
    for record in _records(state).values():
        path = Path(record.get("path", ""))
        if path.suffix == ".npy" and path.resolve().is_relative_to(out.resolve()):
            path.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for part in state.glob("part-*.jsonl"):
        part.unlink()


def _check_out(out: Path, clips: Path) -> None:
    """-o must be a folder (or not exist yet), and not the clips folder itself (each
    clip's features would sit beside it, and read as a clip the next time)."""
    if out.exists() and not out.is_dir():
        raise SurgeryError(f"-o {str(out)!r} is a file", fix="give a folder for the feature files")
    if clips.is_dir() and out.resolve() == clips.resolve():
        raise SurgeryError(
            f"-o {str(out)!r} is the clips folder", fix="give another folder (a sub-folder of it is fine)"
        )


def clip_net(model: str | Path | Net) -> Net:
    """The clip model a spec file makes (with its weights), or the net itself."""
    if isinstance(model, Net):
        return model
    from surgery.runner import plan

    return plan(model, shapes_only=False).net


def _clip_frames(net: Net) -> int:
    from surgery.layers.time_fold import clip_input

    shape = net.shapes()[clip_input(net)]
    assert shape is not None  # a clip model's input has its shape
    return int(shape[1])


def _runner(backbone: Net, device: str | None, torchrun: Shard | None) -> tuple[Any, Any]:
    import torch

    from surgery.emitters.torch_module import emit_torch
    from surgery.verify import torch_device

    if device is None:
        local = int(os.environ.get("LOCAL_RANK", 0)) if torchrun is not None else 0
        # more workers than GPUs share them: decoding is the CPU's work, and a worker per
        # core keeps a GPU busier than one worker can
        device = f"cuda:{local % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    where = torch_device(device, "features")
    return emit_torch(backbone, copy_weights=False).eval().to(where), where


def _complete(target: Path, sampling: Sampling, kind: str) -> bool:
    """A finished output: a readable .npy of (T, F) (T as sampled, for a video sampled
    to a frame count; an array clip keeps its own T)."""
    if not target.is_file():
        return False
    try:
        values = np.load(target, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False  # truncated or not an array: redo it
    return values.ndim == 2 and (kind == "npy" or sampling.frames is None or values.shape[0] == sampling.frames)


def _one_clip(
    clip: Clip,
    target: Path,
    runner: Any,
    device: Any,
    preprocess: Preprocess | None,
    frame_shape: tuple[int, ...],
    sampling: Sampling,
    batch_frames: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    record: dict[str, Any] = {"clip": clip.name, "source": str(clip.path)}
    reader = None
    try:
        if clip.kind == "npy":
            batches, rows = _npy_batches(clip, frame_shape, batch_frames)
            record["frames_total"] = rows
        else:
            if preprocess is None:
                raise ClipError("the net's input is not an image, so video frames cannot feed it")
            reader = ClipReader(clip, preprocess, (int(frame_shape[1]), int(frame_shape[2])))
            record["frames_total"] = reader.count(exact=sampling.stride is not None)
            indices = sampling.indices(record["frames_total"])
            batches, rows = reader.batches(indices, batch_frames), len(indices)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.partial")
        try:
            shape = _write_features(temp, batches, rows, runner, device)
            temp.replace(target)
        finally:
            temp.unlink(missing_ok=True)  # a clip that failed, or a Ctrl-C, leaves no partial file
    except SurgeryError as error:  # ClipError, or a preprocessing the frames cannot take
        record["error"] = error.message
        return record
    except OSError as error:  # the disk is full, the folder not writable: this clip fails, named
        record["error"] = f"cannot write {str(target)!r}: {error.strerror or error}"
        return record
    record.update(
        path=str(target),
        frames_read=rows,
        shape=list(shape),
        sha256=sha256_file(target)[0],
        seconds=round(time.perf_counter() - started, 3),
    )
    return record


def _write_features(temp: Path, batches: Any, rows: int, runner: Any, device: Any) -> tuple[int, int]:
    """Run the backbone batch by batch into a ``(rows, F)`` .npy file: only one batch of
    frames and its features are in memory at a time."""
    import torch

    array = None
    row = 0
    with torch.no_grad():
        for frames in batches:
            checkpoint()
            values = runner(torch.from_numpy(frames).to(device)).float().cpu().numpy().reshape(len(frames), -1)
            if array is None:
                array = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=(rows, values.shape[1]))
            array[row : row + len(values)] = values
            row += len(values)
    if array is None or row != rows:
        raise ClipError(f"{row} frames came out of the decoder, {rows} were expected")
    array.flush()
    shape = array.shape
    del array
    return shape


def _npy_batches(clip: Clip, frame_shape: tuple[int, ...], batch: int) -> tuple[Any, int]:
    """A ``(T, C, H, W)`` array already at the net's input (no decoding, no preprocessing)."""
    try:
        frames = np.load(clip.path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ClipError(f"cannot read it: {error}") from None
    if frames.ndim != 4 or tuple(frames.shape[1:]) != frame_shape:
        raise ClipError(f"it has shape {frames.shape}, expected (T, {', '.join(map(str, frame_shape))})")
    chunks = (np.ascontiguousarray(frames[start : start + batch], np.float32) for start in range(0, len(frames), batch))
    return chunks, len(frames)


def _append(part: Path, record: dict[str, Any]) -> None:
    with open(part, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _records(state: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each clip over every worker's part file."""
    latest: dict[str, dict[str, Any]] = {}
    for part in sorted(state.glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            latest[record["clip"]] = record
    return latest


def _write_manifest(
    out: Path, clips: list[Clip], sampling: Sampling, preprocess: Preprocess | None, spec: str | None
) -> tuple[Path | None, int]:
    """``manifest.json`` once every clip has an output; else how many still wait."""
    records = _records(out / STATE_DIR)
    entries, failed, waiting = [], [], 0
    for clip in clips:
        target = out / f"{clip.name}.npy"
        record = records.get(clip.name, {})
        if "error" in record and not target.is_file():
            failed.append({"clip": clip.name, "error": record["error"]})
        elif not _complete(target, sampling, clip.kind):
            waiting += 1
        else:
            if record.get("sha256") is None or Path(record.get("path", "")).resolve() != target.resolve():
                record = {"clip": clip.name, "path": str(target), "frames_read": None}
                record["sha256"] = sha256_file(target)[0]
                record["shape"] = list(np.load(target, mmap_mode="r").shape)
            keys = ("clip", "frames_total", "frames_read", "shape", "sha256", "note")
            entry = {k: record[k] for k in keys if record.get(k) is not None}
            entries.append(entry | {"file": target.relative_to(out).as_posix()})
    if waiting:
        return None, waiting
    manifest = {
        "spec": spec,
        "sampling": sampling.describe(),
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "clips": entries,
        "failed": failed,
    }
    target = out / MANIFEST
    temp = target.with_name(f".{MANIFEST}.{secrets.token_hex(4)}.partial")
    temp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    temp.replace(target)
    return target, 0


class _Group:
    """The torchrun process group: a barrier, and the check that every rank sees the
    same output folder (a per-machine folder would leave each machine a part)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    @classmethod
    def start(cls, out: Path, shard: Shard) -> _Group:
        import torch.distributed as dist

        if not dist.is_initialized():
            # gloo, also on GPUs: the group only waits at a barrier, and NCCL refuses two
            # ranks on one GPU (more workers than GPUs)
            dist.init_process_group(backend="gloo")
        group = cls(dist)
        token = secrets.token_hex(8)
        marks = out / STATE_DIR / "ranks"
        marks.mkdir(parents=True, exist_ok=True)
        (marks / f"rank-{shard.index}").write_text(token)
        tokens: list[Any] = [None] * shard.count
        dist.all_gather_object(tokens, token)
        unseen = [
            rank
            for rank, expected in enumerate(tokens)
            if not (marks / f"rank-{rank}").is_file() or (marks / f"rank-{rank}").read_text() != expected
        ]
        dist.barrier()
        if unseen:
            group.close()
            raise SurgeryError(
                f"rank {shard.index} does not see what ranks {unseen} wrote to {str(out)!r}: the ranks do not "
                "share the output folder",
                fix="give -o a folder every machine mounts (or run each machine with --shard K/N)",
            )
        return group

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        """Tear the group down once every rank is here (rank 0 writes the manifest first):
        a rank destroying its group while another still works can abort gloo."""
        if self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()


__all__ = ["FeaturesRun", "Shard", "extract", "torchrun_shard"]
