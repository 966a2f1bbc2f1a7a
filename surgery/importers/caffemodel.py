"""A caffemodel's trained blobs by layer name, read lazily.

A caffemodel is one binary ``NetParameter``. It is memory-mapped, and only its layers'
names and blob shapes are parsed (with protobuf, see :mod:`surgery.importers.wire`):
each blob's values are viewed in the file when a weight is first used, so ``inspect`` and
``plan`` never read them, and ``apply`` holds each weight once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import ModelFormatError
from surgery.importers import wire
from surgery.spec.schema import caffe_class
from surgery.untrusted import regular_file

_NET = caffe_class("NetParameter").DESCRIPTOR
_LAYER, _V1_LAYER = _NET.fields_by_name["layer"].number, _NET.fields_by_name["layers"].number
_BLOBS = {
    _LAYER: caffe_class("LayerParameter").DESCRIPTOR.fields_by_name["blobs"].number,
    _V1_LAYER: caffe_class("V1LayerParameter").DESCRIPTOR.fields_by_name["blobs"].number,
}
_BLOB = caffe_class("BlobProto").DESCRIPTOR
_VALUES = {_BLOB.fields_by_name["data"].number: np.float32, _BLOB.fields_by_name["double_data"].number: np.float64}


@dataclass
class StoredBlob:
    """One BlobProto of the caffemodel: its shape (parsed), its values (on demand)."""

    head: Any  # the BlobProto without its values
    buffer: Any
    span: tuple[int, int]  # the whole BlobProto's bytes
    values: tuple[int, int, type] | None  # (offset, length, dtype) of its packed values

    @property
    def shape(self) -> tuple[int, ...]:
        """Legacy 4-D dims when any is present, else ``shape.dim`` (as Caffe reads them)."""
        head = self.head
        if any(head.HasField(f) for f in ("num", "channels", "height", "width")):
            return (head.num, head.channels, head.height, head.width)
        return tuple(int(d) for d in head.shape.dim)

    def array(self) -> np.ndarray:
        """The values as float32 with :attr:`shape`."""
        if self.values is not None:
            offset, length, dtype = self.values
            values = wire.view(self.buffer, np.dtype(dtype), offset, length // np.dtype(dtype).itemsize)
        else:  # unpacked or split values (legal, rare): protobuf parses the blob whole
            start, end = self.span
            full = caffe_class("BlobProto").FromString(bytes(self.buffer[start:end]))
            values = np.asarray(full.double_data if len(full.double_data) else full.data)
        if values.size != math.prod(self.shape):
            raise ModelFormatError(
                f"a caffemodel blob holds {values.size} values for shape {self.shape}",
                fix="the file is truncated or corrupt: download or export it again",
            )
        return values.astype(np.float32, copy=False).reshape(self.shape)


def _blob(buffer: Any, item: wire.Field) -> StoredBlob:
    head_bytes, value_fields = wire.split(buffer, item.value_start, item.end, set(_VALUES))
    packed = [f for f in value_fields if f.wire_type == wire.LENGTH_DELIMITED]
    values = None
    if len(value_fields) == 1 and packed:
        values = (packed[0].value_start, packed[0].end - packed[0].value_start, _VALUES[packed[0].number])
    return StoredBlob(caffe_class("BlobProto").FromString(head_bytes), buffer, (item.value_start, item.end), values)


def _layers(buffer: Any, size: int) -> list[tuple[str, list[StoredBlob]]]:
    found, kinds = [], set()
    for item in wire.fields(buffer, 0, size):
        if item.number not in _BLOBS or item.wire_type != wire.LENGTH_DELIMITED:
            continue
        kinds.add(item.number)
        head, blobs = wire.split(buffer, item.value_start, item.end, {_BLOBS[item.number]})
        message = caffe_class("LayerParameter" if item.number == _LAYER else "V1LayerParameter").FromString(head)
        found.append((message.name, [_blob(buffer, b) for b in blobs]))
    if len(kinds) == 2:
        raise ModelFormatError("the caffemodel mixes `layer` and legacy `layers`", fix="use one form")
    return found


def stored_weights(path: Path) -> dict[str, list[StoredBlob]]:
    """Source layer name -> its blobs (the first layer of each name that has blobs, as
    Caffe's CopyTrainedLayersFrom matches them). No value is read."""
    regular_file(path, "caffemodel")
    try:
        buffer = wire.open_mapped(path, "caffemodel")
        layers = _layers(buffer, path.stat().st_size)
    except ModelFormatError:
        raise
    except Exception as error:  # noqa: BLE001  (wire.WireError, protobuf's DecodeError: a located error)
        raise ModelFormatError(
            f"{str(path)!r} is not a readable caffemodel ({type(error).__name__}: {error})",
            fix="the file is truncated or corrupt: download or export it again",
        ) from None
    if not layers:
        raise ModelFormatError(f"{str(path)!r} holds no layers (is it a caffemodel?)")
    found: dict[str, list[StoredBlob]] = {}
    for name, blobs in layers:
        if blobs and name not in found:
            found[name] = blobs
    for name, blobs in found.items():
        for blob in blobs:
            _check_size(blob, name, path)
    return found


def _check_size(blob: StoredBlob, layer: str, path: Path) -> None:
    """A packed blob's byte count against its header's shape, before anything is read."""
    if blob.values is None:
        return
    _, length, dtype = blob.values
    count = math.prod(blob.shape)
    if length != count * np.dtype(dtype).itemsize:
        raise ModelFormatError(
            f"{str(path)!r}: a blob of layer {layer!r} stores {length} bytes for shape "
            f"{blob.shape} ({count * np.dtype(dtype).itemsize} bytes)",
            fix="the file is truncated or corrupt: download or export it again",
        )
