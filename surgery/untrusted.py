"""What a model file may make surgery read: itself, and regular files inside its own folder.

Model files come from strangers. Every path one names (ONNX external data of an
initializer or a Constant, a Caffe ``mean_file``, HDF5 external storage) is data, and one
rule serves them all (:func:`contained`): a relative name, no NUL, resolved (symlinks
followed) to a regular file inside the model's folder, or one located error. A path the
user names (the model file, the spec) need not be inside anything, but it is ``stat``-ed
before it is opened (:func:`regular_file`): a FIFO blocks the open or the read forever, a
device such as ``/dev/zero`` never ends, and a folder is not a model. :func:`open_regular`
opens without blocking and checks the opened file again, so a path swapped for a FIFO
between the two steps is still refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from surgery.errors import ModelFormatError, SurgeryError

#: Longest name a model file may give for a file it refers to (Linux's PATH_MAX).
MAX_NAME = 4096


def _kind(mode: int) -> str | None:
    """What a non-regular file is, for the error; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def regular_file(path: str | Path, what: str, error: type[SurgeryError] = ModelFormatError) -> os.stat_result:
    """``stat`` ``path`` (following links) and refuse anything but an existing regular file.

    Args:
        path: the file.
        what: what it is, for the message (``"ONNX file"``, ``"mean_file"``).
        error: the exception class to raise (a spec's own file raises ``SpecError``).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except (OSError, ValueError) as failure:  # a loop of links, a name too long, a NUL
        reason = getattr(failure, "strerror", None) or str(failure)
        raise error(f"{what} {str(path)!r} cannot be opened: {reason}") from None
    kind = _kind(info.st_mode)
    if kind is not None:
        raise error(
            f"{what} {str(path)!r} is {kind}, not a regular file",
            fix="name a file (surgery reads no pipes, devices or folders as model files)",
        )
    return info


def open_regular(path: str | Path, what: str, error: type[SurgeryError] = ModelFormatError) -> BinaryIO:
    """``path`` opened for reading, checked to be a regular file before and after the
    open (opened non-blocking, so a FIFO swapped in between cannot hang the open)."""
    regular_file(path, what, error)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as failure:
        raise error(f"cannot read {what} {str(path)!r}: {failure.strerror or failure}") from None
    kind = _kind(os.fstat(descriptor).st_mode)
    if kind is not None:
        os.close(descriptor)
        raise error(f"{what} {str(path)!r} is {kind}, not a regular file", fix="name a file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def read_regular(path: str | Path, what: str, limit: int, error: type[SurgeryError] = ModelFormatError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading)."""
    with open_regular(path, what, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise error(
                f"{what} {str(path)!r} has {size} bytes, more than the {limit} such a file may hold",
                fix="is this the right file?",
            )
        return handle.read(size)  # what it held when measured, not what it grew to


def contained(folder: str | Path, name: str, what: str) -> Path:
    """The file a model file in ``folder`` names as ``name``, refused unless it is a
    regular file inside ``folder`` (after following every symlink).

    Args:
        folder: the folder of the model file that names it.
        name: the name as the file gives it (relative to ``folder``).
        what: what refers to it, for the message (``"initializer 'w'"``).

    Raises:
        ModelFormatError: empty, absolute, NUL or overlong name; outside the folder;
            missing; a loop of links; not a regular file.
    """
    fix = "keep the files a model refers to beside it, in its folder, under their own names"
    if not isinstance(name, str) or not name or "\0" in name or len(name) > MAX_NAME:
        shown = name[:80] + "..." if isinstance(name, str) and len(name) > 80 else name
        raise ModelFormatError(f"{what} names the file {shown!r}, which is not a usable file name", fix=fix)
    if Path(name).is_absolute():
        raise ModelFormatError(
            f"{what} names the absolute path {name!r}; a model may name files in its folder", fix=fix
        )
    base = Path(folder).resolve()
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError, ValueError) as failure:  # RuntimeError: a loop of links (Python < 3.13)
        reason = getattr(failure, "strerror", None) or str(failure)
        raise ModelFormatError(f"{what} names the file {name!r}, which cannot be resolved: {reason}", fix=fix) from None
    if not target.is_relative_to(base):
        raise ModelFormatError(f"{what} names {name!r}, which is outside the model's folder {str(base)!r}", fix=fix)
    if not os.path.lexists(target):
        raise ModelFormatError(f"{what} names the file {name!r}, which is missing from {str(base)!r}", fix=fix)
    regular_file(target, what)
    return target
