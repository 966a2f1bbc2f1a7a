"""The ``-o`` folder of ``apply``: what may be written, where, and how it replaces what
was there, without ever leaving the user with neither the old output nor the new one.

- Every output path is checked before anything is built: relative, inside ``-o``, not
  empty, no two outputs on one path (:func:`check_output_paths`).
- ``-o`` may not be, or hold, any input of the run; an existing folder is replaced only
  with ``--force``, and only when it is a previous output of surgery (it holds
  :data:`MARKER`) unless ``--force-any`` (:func:`check_target`).
- Outputs are built in a staging folder beside ``-o`` (named after it, with this
  process's id) that holds the marker from its first moment. A later apply removes
  staging folders whose process is gone (:func:`clean_stale`).
- The staging folder becomes ``-o`` in one atomic step, under a lock on the parent
  folder, and only if ``-o`` is still what it was when the run started: a new ``-o``
  appears with ``renameat2(RENAME_NOREPLACE)``; an old one is swapped out with
  ``RENAME_EXCHANGE`` and then deleted (:func:`publish`). Where renameat2 is missing, two
  renames under the lock, and a later apply puts a stranded old output back.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import posixpath
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.emitters.files import FileLog, sha256_file
from surgery.errors import SpecError, SurgeryError, option
from surgery.spec import LoadedSpec

#: The file that marks a folder as surgery's output (or a staging folder of it).
MARKER = ".surgery-output"
MARKER_TEXT = "This folder was written by `surgery apply`; `surgery apply --force` may replace it.\n"
_STAGING = "partial"
_BACKUP = "old"
_NAME_ROOM = 100  # characters of -o's name kept in staging names (file names stop at 255 bytes)


# -------------------------------------------------------------------------- paths
def check_output_path(value: str, what: str) -> str:
    """``value`` (a path from the spec's output block) as a normalised relative path
    inside the output folder, or a SpecError about it."""
    if not value or not value.strip():
        raise SpecError(f"{what} is empty", fix="give it a file name, e.g. model.onnx", subject=value)
    if "\0" in value:
        raise SpecError(f"{what} {value!r} contains a NUL character", subject=value)
    text = value.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or os.path.isabs(value):
        raise SpecError(
            f"{what} {value!r} is absolute; outputs are written inside the output folder ({_out()})",
            fix="write a path relative to the output folder",
            subject=value,
        )
    normal = posixpath.normpath(text)
    if normal == "." or normal == ".." or normal.startswith("../") or ".." in text.split("/"):
        raise SpecError(
            f"{what} {value!r} leaves the output folder ({_out()})",
            fix="write a path inside the output folder, without '..'",
            subject=value,
        )
    return normal


def check_output_paths(outputs: Iterable[tuple[str, str, str]], reserved: Iterable[str] = (MARKER,)) -> None:
    """Outputs ``(path, what, spec value)``: each inside ``-o``; no two on one path, none
    inside another (a file where a folder must go), none on a ``reserved`` name."""
    seen: dict[str, str] = {}
    taken = {name.casefold() for name in reserved}
    for path, what, value in outputs:
        normal = check_output_path(path, what)
        if normal.casefold() in taken or normal.split("/")[0].casefold() in taken:
            raise SpecError(
                f"{what} {value!r} would replace the run's own {normal}", fix="choose another file name", subject=value
            )
        key = normal.casefold()  # case-insensitive file systems would merge these
        for other_key, other in seen.items():
            if key == other_key or key.startswith(other_key + "/") or other_key.startswith(key + "/"):
                raise SpecError(
                    f"{what} {value!r} collides with {other}",
                    fix="give each output its own path in the output { } block",
                    subject=value,
                )
        seen[key] = f"{what} {value!r}"


# ------------------------------------------------------------------------ records
def input_files(loaded: LoadedSpec) -> list[Path]:
    """The files a run reads: the spec, every existing file its ``source`` names (a
    factory's ``file.py``, weights, model files, whatever the source kind), an ONNX
    file's external data, and collapse calibration data."""
    base = loaded.base_dir
    message = loaded.message
    found = [loaded.path]
    solver = [message.solver.caffe] if message.HasField("solver") and message.solver.caffe else []
    values = (
        list(_strings(message.source))
        + solver
        + [
            item.collapse.calibration
            for item in message.edit
            if item.WhichOneof("op") == "collapse" and item.collapse.calibration
        ]
    )
    for value in values:
        for candidate in (value, value.rpartition(":")[0]):  # "models/net.py:build"
            if candidate and "\0" not in candidate and (base / candidate).is_file():
                found.append(base / candidate)
    found += _referenced_files(message.source, base)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _referenced_files(source: Any, base: Path) -> list[Path]:
    """The files a source's model file names itself: an ONNX file's external data, a
    Caffe prototxt's mean_file (each checked to be inside the model's folder)."""
    kind = source.WhichOneof("format")
    try:
        if kind == "onnx" and (base / source.onnx.path).is_file():
            from surgery.importers.onnx_model import external_data_files

            return external_data_files(base / source.onnx.path)
        if kind == "caffe" and (base / source.caffe.prototxt).is_file():
            from surgery.importers.caffe import mean_files

            return mean_files(base / source.caffe.prototxt)
    except SurgeryError:
        pass  # an unreadable file is reported, located, when the source loads
    return []


def _strings(message: Any) -> Iterator[str]:
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None:
            for item in value if hasattr(value, "extend") else [value]:
                yield from _strings(item)
        elif isinstance(value, str):
            yield value
        elif hasattr(value, "extend"):
            yield from (item for item in value if isinstance(item, str))


def file_records(paths: list[Path], base: Path) -> list[dict[str, Any]]:
    """``{"path", "sha256", "size"}`` of each file (path relative to ``base`` when inside)."""
    records = []
    for path in paths:
        digest, size = sha256_file(path)
        try:
            name = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            name = str(path.resolve())
        records.append({"path": name, "sha256": digest, "size": size})
    return records


def output_records(log: FileLog, root: Path) -> list[dict[str, Any]]:
    """The files ``log`` recorded, as records relative to the output folder ``root``."""
    return [
        {"path": path.relative_to(root).as_posix(), "sha256": digest, "size": size}
        for path, (digest, size) in log.files.items()
    ]


# ------------------------------------------------------------------------- target
def output_path(value: str | Path) -> Path:
    """The ``-o`` folder as an absolute path (``a/..`` resolved as text, symlinks kept),
    refusing the file system root and an empty name."""
    text = os.fspath(value)
    path = Path(os.path.abspath(text)) if text else Path()
    if not text or not path.name:
        raise SurgeryError(
            f"{text!r} cannot be an output folder", fix="pass -o with a new folder's name, e.g. -o out/run1"
        )
    return path


@dataclass(frozen=True)
class Target:
    """``-o`` as found at the start of a run: its identity (None when absent), so the
    final swap can tell that someone else wrote it meanwhile."""

    path: Path
    identity: tuple[int, int] | None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def is_previous_output(path: Path) -> bool:
    """Whether ``path`` is a folder surgery wrote: its marker, or (from versions before
    the marker) a report.json with surgery's fields."""
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / MARKER).is_file():
        return True
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"net", "layers", "edits"} <= set(report)


def check_target(out: Path, inputs: Iterable[Path], *, force: bool, force_any: bool) -> Target:
    """Refuse an ``-o`` that is or holds an input of the run, or that exists and may not
    be replaced; the target's identity otherwise."""
    absolute = Path(os.path.abspath(out))
    resolved = out.resolve()
    for item in inputs:
        for candidate in {Path(os.path.abspath(item)), Path(item).resolve()}:
            for folder in (absolute, resolved):
                if candidate == folder or candidate.is_relative_to(folder):
                    raise SurgeryError(
                        f"the output folder {str(out)!r} holds an input of this run ({str(item)!r}); "
                        "replacing it would delete that input",
                        fix=f"write the outputs to another folder ({_out()})",
                    )
    if os.path.lexists(out):
        empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
        if not empty and not (force or force_any):
            raise SurgeryError(
                f"output folder {str(out)!r} already exists and is not empty",
                fix=f"choose another {_out()} folder, or pass {option('--force', 'force=True')} to replace a "
                "previous output",
            )
        if not empty and not force_any and not is_previous_output(out):
            raise SurgeryError(
                f"{str(out)!r} is not an output of surgery (it has no {MARKER} file); "
                f"{option('--force', 'force=True')} only replaces previous outputs",
                fix=f"choose another {_out()} folder, or pass {option('--force-any', 'force_any=True')} to replace "
                "it anyway",
            )
    return Target(out, _identity(out))


def _out() -> str:
    return option("-o", "out_dir")


# ------------------------------------------------------------------------ staging
def _prefix(out: Path, kind: str) -> str:
    return f".{out.name[:_NAME_ROOM]}.{kind}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(entry: Path, prefix: str) -> int | None:
    """The pid in a staging/backup folder's name, or None if the name is not ours."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)-[0-9a-f]{8}", entry.name)
    return int(match.group(1)) if match else None


def clean_stale(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` left by runs that died (marker inside, process
    gone); put back an old output a killed swap left aside when ``out`` is missing, or
    remove it when ``out`` is there. Returns what was removed or restored."""
    parent = out.parent
    if not parent.is_dir():
        return []
    touched = []
    with _locked(parent):
        for entry in sorted(parent.iterdir()):
            for kind in (_STAGING, _BACKUP):
                pid = _owner(entry, _prefix(out, kind))
                if pid is None or pid == os.getpid() or _pid_alive(pid) or entry.is_symlink():
                    continue
                if kind == _BACKUP and not os.path.lexists(out):
                    os.rename(entry, out)
                elif (entry / MARKER).is_file():
                    remove_output(entry)
                else:
                    continue
                touched.append(entry)
    return touched


def make_staging(out: Path) -> Path:
    """A new, empty staging folder beside ``out`` (mode 0777 & ~umask) holding the marker."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{_prefix(out, _STAGING)}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(staging, 0o777)
    with open(staging / MARKER, "x") as marker:
        marker.write(MARKER_TEXT)
    return staging


def remove_output(folder: Path) -> None:
    """Delete a staging folder or an old output, the marker last: a run killed halfway
    leaves a folder that :func:`clean_stale` still recognises."""
    if folder.is_symlink() or not folder.is_dir():
        folder.unlink(missing_ok=True)
        return
    for child in folder.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------ publish
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """renameat2(2) through libc; False when this system or file system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` among surgery processes (flock on the folder itself:
    no lock file to leave behind)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the renames alone decide
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _changed(target: Target) -> SurgeryError:
    return SurgeryError(
        f"{str(target.path)!r} changed while this apply ran (another apply wrote it first); "
        "nothing of this run was kept",
        fix=f"run it again (with {option('--force', 'force=True')} to replace the other output)",
    )


def publish(staging: Path, target: Target) -> None:
    """Make ``staging`` the output folder in one step, if the target is still what
    :func:`check_target` saw; the old output (if any) is deleted after the swap."""
    out = target.path
    with _locked(out.parent):
        if _identity(out) != target.identity:
            raise _changed(target)
        if target.identity is None:
            try:
                if not _renameat2(staging, out, _RENAME_NOREPLACE):
                    os.rename(staging, out)  # under the lock, nobody else publishes meanwhile
            except FileExistsError:
                raise _changed(target) from None
            return
        if _renameat2(staging, out, _RENAME_EXCHANGE):
            old = staging  # the old output now sits under the staging name
        else:
            old = out.parent / f"{_prefix(out, _BACKUP)}{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
            os.rename(staging, out)
    remove_output(old)


__all__ = [
    "MARKER",
    "Target",
    "check_output_path",
    "check_output_paths",
    "check_target",
    "clean_stale",
    "file_records",
    "input_files",
    "is_previous_output",
    "make_staging",
    "output_path",
    "output_records",
    "publish",
    "remove_output",
]
