"""Reading a big protobuf file (a caffemodel, an ONNX model) without reading its weights.

Both formats keep every weight inside one protobuf message, and protobuf's Python API
parses a message whole: reading a file's layer names and shapes would read (and copy)
every weight. This module walks the protobuf wire format only as far as needed to find
the byte ranges of the large fields, with the file memory-mapped. protobuf itself then
parses everything else, and each weight is viewed in place when something asks for it
(``inspect`` and ``plan`` never do).

The wire format is a sequence of (tag, value) fields; a tag is a varint
``field_number << 3 | wire_type`` (protobuf's encoding documentation).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.errors import ModelFormatError
from surgery.untrusted import open_regular

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or corrupt)."""


@dataclass(frozen=True)
class Field:
    """One field of a message: its number, wire type, the whole field's byte span
    (tag included) and, for length-delimited fields, the value's span."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def _varint(buffer: mmap.mmap | bytes, position: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= end or shift > 63:
            raise WireError("a varint runs past the end of its message")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def fields(buffer: mmap.mmap | bytes, start: int, end: int) -> Iterator[Field]:
    """The fields of the message stored in ``buffer[start:end]``, in file order."""
    position = start
    while position < end:
        tag, value_start = _varint(buffer, position, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            _, field_end = _varint(buffer, value_start, end)
        elif wire_type == FIXED64:
            field_end = value_start + 8
        elif wire_type == FIXED32:
            field_end = value_start + 4
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = _varint(buffer, value_start, end)
            field_end = value_start + length
        else:
            raise WireError(f"field {number} has wire type {wire_type}, which no current protobuf writes")
        if number == 0 or field_end > end:
            raise WireError("a field runs past the end of its message (the file is truncated)")
        yield Field(number, wire_type, position, value_start, field_end)
        position = field_end


def split(buffer: mmap.mmap | bytes, start: int, end: int, keep_out: set[int]) -> tuple[bytes, list[Field]]:
    """The message's bytes without the fields numbered ``keep_out`` (protobuf parses
    those bytes as the same message, minus those fields), and the fields left out."""
    kept, left_out, run_start = [], [], start
    for item in fields(buffer, start, end):
        if item.number in keep_out:
            kept.append(buffer[run_start : item.start])
            left_out.append(item)
            run_start = item.end
    kept.append(buffer[run_start:end])
    return b"".join(kept), left_out


class MappedFile(mmap.mmap):
    """A memory-mapped file that remembers its path and size when mapped.

    Touching a page past the end of a file that another process truncated after it was
    mapped kills the process with SIGBUS, which no Python code can catch. :func:`view`
    therefore compares the file's current size with the bytes it is about to touch
    first; what remains (a truncation between that check and the copy) is a limit of
    memory mapping, documented in the README."""

    path: Path
    mapped_size: int

    def check_span(self, end: int) -> None:
        """Raise :class:`FileChangedError` when the file no longer reaches ``end``."""
        try:
            size = self.path.stat().st_size
        except OSError as error:
            raise FileChangedError(f"{str(self.path)!r} went away while in use ({error.strerror})") from None
        if size < min(end, self.mapped_size):
            raise FileChangedError(
                f"{str(self.path)!r} was truncated while in use: it is {size} bytes now, "
                f"{self.mapped_size} when it was opened"
            )


class FileChangedError(ModelFormatError):
    """A mapped file shrank or disappeared after it was opened."""

    def __init__(self, message: str) -> None:
        super().__init__(message, fix="do not rewrite model files while surgery reads them; run it again")


def open_mapped(path: Path, what: str = "model file") -> MappedFile | bytes:
    """``path`` memory-mapped copy-on-write: pages are read from disk only when touched,
    arrays viewed in it are writable, and nothing is ever written back to the file. Only
    a regular file is opened (:func:`surgery.untrusted.open_regular`)."""
    with open_regular(path, what) as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return b""  # mmap refuses empty files
        mapped = MappedFile(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped.path, mapped.mapped_size = Path(path), size
    return mapped


def view(buffer: mmap.mmap | bytes, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """``count`` little-endian values at ``offset``: a view in place when aligned, else a copy."""
    if isinstance(buffer, MappedFile):
        buffer.check_span(offset + count * np.dtype(dtype).itemsize)
    array = np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
    return array if array.flags.aligned and array.dtype.isnative else array.astype(np.dtype(dtype), copy=True)
