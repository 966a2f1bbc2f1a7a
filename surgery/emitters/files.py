"""Writing output files: atomically, with the user's umask, hashed while written.

Every emitter writes through :func:`output_file`. A file appears under its name only
once complete (written to a temporary name beside it, then renamed), its mode honours the
umask like any file a program creates (``0666 & ~umask``, not a temp file's 0600), and
its sha256 and size are computed from the bytes as they pass, so recording them costs no
second read. A :class:`FileLog` collects those records; with ``exclusive`` it also
refuses to replace a file already there (two outputs of one run landing on one path).
"""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import SurgeryError
from surgery.lazy_torch import is_tensor

#: Writes at least this large are hashed on a helper thread: hashing then overlaps with
#: the writer's own work (torch's CRC of the next record, the copy into the page cache).
_ASYNC_BYTES = 1 << 20


def memory_ranges(buffers: Iterable[Any]) -> list[tuple[int, int]]:
    """The address ranges of tensors' storages / arrays' memory (CPU only), for
    :class:`HashingWriter`'s ``stable``."""
    ranges = []
    for item in buffers:
        if is_tensor(item):
            if item.device.type == "cpu":
                storage = item.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        elif isinstance(item, np.ndarray):
            ranges.append((item.ctypes.data, item.ctypes.data + item.nbytes))
    return sorted(ranges)


class HashingWriter:
    """A binary file object that hashes (sha256) and counts what it writes.

    Hashing runs on a helper thread, in order. A large write whose memory lies inside
    ``stable`` (address ranges the caller keeps alive and unchanged until the writer is
    finished: the tensors being saved) is queued without a copy and the write returns at
    once; any other large write waits until it is hashed (its memory may be reused once
    ``write`` returns); small ones are copied.
    """

    def __init__(self, raw: Any, name: str = "", stable: list[tuple[int, int]] | None = None) -> None:
        self.raw = raw
        self.name = name
        self.size = 0
        self._stable = stable or []
        self._digest = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._hash, name="surgery-hash-output", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            self._digest.update(item)
            self._queue.task_done()

    def _is_stable(self, view: memoryview) -> bool:
        start = np.frombuffer(view, np.uint8).ctypes.data
        end = start + view.nbytes
        return any(low <= start and end <= high for low, high in self._stable)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes < _ASYNC_BYTES:
            chunk = bytes(view)
            self.raw.write(chunk)
            self._queue.put(chunk)
        elif self._is_stable(view):
            self.raw.write(view)
            self._queue.put(view)
        else:
            self._queue.put(view)
            self.raw.write(view)
            self._queue.join()  # hashed before the caller may reuse the memory
        self.size += view.nbytes
        return view.nbytes

    def finish(self) -> str:
        """Wait for the hashing to end; the sha256 hex digest of everything written."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self._digest.hexdigest()

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size


@dataclass
class FileLog:
    """What was written: path -> (sha256 hex, size in bytes), in order of writing.

    ``exclusive``: a file that already exists is an error instead of being replaced.
    """

    exclusive: bool = False
    files: dict[Path, tuple[str, int]] = field(default_factory=dict)

    def record(self, path: Path, sha256: str, size: int) -> None:
        self.files[Path(path)] = (sha256, size)


@contextmanager
def output_file(path: str | Path, log: FileLog | None = None, stable: Iterable[Any] = ()) -> Iterator[HashingWriter]:
    """Open ``path`` for writing; it appears (atomically) when the block ends without error.
    ``stable``: tensors / arrays being written that stay alive and unchanged meanwhile
    (their bytes are then hashed without a copy, beside the writing).

    Example:
        >>> with output_file(folder / "model.py", log) as out:
        ...     out.write(source.encode())
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = HashingWriter(raw, str(path), memory_ranges(stable))
            try:
                yield writer
            finally:
                digest = writer.finish()
        if log is not None and log.exclusive:
            _move_new(temp, path)
        else:
            os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a failed write names its file (a full disk, say)
        raise
    if log is not None:
        log.record(path, digest, writer.size)


def _move_new(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless that name is taken: a hard link fails
    instead of replacing (on a file system without hard links: check, then rename)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise SurgeryError(
            f"two outputs would both be written to {path.name!r}",
            fix="give each output its own path in the spec's output { } block",
            subject=path.name,
        ) from None
    except OSError:
        if os.path.lexists(path):
            raise SurgeryError(
                f"two outputs would both be written to {path.name!r}",
                fix="give each output its own path in the spec's output { } block",
                subject=path.name,
            ) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def write_bytes(path: str | Path, data: bytes, log: FileLog | None = None) -> Path:
    """Write ``data`` to ``path`` through :func:`output_file`; the path."""
    with output_file(path, log) as out:
        out.write(data)
    return Path(path)


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in large chunks into one reused buffer
    (a memory map would count every page in the process's resident memory a second time
    beside a memory-mapped load); hashlib hashes without the GIL, so this runs beside
    other work in a thread."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


__all__ = ["FileLog", "HashingWriter", "output_file", "sha256_file", "write_bytes"]
