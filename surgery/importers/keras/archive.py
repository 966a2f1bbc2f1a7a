"""Opening a Keras file: the model config (JSON) and its weights (HDF5), nothing read early.

Two containers hold the same thing:

- a Keras 3 ``.keras`` archive: a zip with ``config.json`` and ``model.weights.h5``.
  The weights file is stored uncompressed, so it is read in place from the memory-mapped
  archive (h5py reads through a file object); a compressed one is read into memory.
  Variables sit at ``layers/<class in snake case>[_n]/vars/<i>``, in the order each
  layer creates them; ``_n`` counts earlier layers of the same class in the model.
- a legacy ``.h5`` file: the config in the root attribute ``model_config`` and the
  weights in ``model_weights/<top-level layer name>/``, each variable named
  ``<layer name>/.../<variable name>`` (``conv1/kernel``, ``lstm/lstm_cell/bias``).

Each layer's variables are reached through a :class:`Scope`; a variable's values are read
only when its blob's data is first used.
"""

from __future__ import annotations

import io
import json
import mmap
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import ModelFormatError
from surgery.importers import wire
from surgery.ir.budget import check_bytes, human_bytes, memory_budget, tensor_bytes
from surgery.untrusted import regular_file

try:
    import h5py
except ImportError:  # reported when a Keras file is opened, not on import
    h5py = None


@dataclass
class Variable:
    """One stored variable: its shape and dtype are known without reading it.

    ``mapped`` is the memory-mapped file holding the HDF5 data and where the HDF5 file
    starts in it (inside a ``.keras`` zip, after the member's header): a contiguous,
    unfiltered dataset is then viewed in place, as the other formats' weights are."""

    dataset: Any
    where: str
    mapped: tuple[Any, int] | None = None
    keep: Any = None  # the file object h5py reads the archive through: kept open with the blob

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.dataset.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dataset.dtype)

    def read(self) -> np.ndarray:
        """The values: a view into the mapped file when the dataset is stored contiguous,
        unfiltered and little-endian; else read by h5py."""
        dataset, count = self.dataset, int(np.prod(self.shape))
        offset = dataset.id.get_offset() if self.mapped is not None and count else None
        if (
            offset is not None
            and self.mapped is not None
            and dataset.chunks is None
            and self.dtype.byteorder in "=<|"
            and self.dtype.kind in "fiub"
        ):
            buffer, base = self.mapped
            if base + offset + count * self.dtype.itemsize <= len(buffer):
                return wire.view(buffer, self.dtype, base + offset, count).reshape(self.shape)
        # Read by h5py: a compressed dataset inflates to its full size, whatever the file's.
        check_bytes(
            f"reading the Keras variable {self.where!r} ({list(self.shape)}, {self.dtype})",
            tensor_bytes(self.shape, self.dtype.itemsize),
            fix="is this the right file? (SURGERY_MEMORY_BUDGET raises the limit)",
        )
        try:
            return np.asarray(dataset[()])
        except (OSError, RuntimeError, ValueError, KeyError) as error:  # a corrupt chunk or filter
            raise ModelFormatError(
                f"the Keras variable {self.where!r} cannot be read ({type(error).__name__}: {error})",
                fix="the file is corrupt: save the model again",
            ) from None


class Scope:
    """Where one Keras layer's variables are; models hand out their layers' scopes."""

    def child(self, class_name: str, name: str) -> Scope:
        """The scope of a layer of a model (call in the model's layer order)."""
        raise NotImplementedError

    def attribute(self, attr: str, name: str | None = None) -> Scope:
        """The scope of a sub-object (``cell`` of an RNN, ``layer`` of a wrapper)."""
        raise NotImplementedError

    def variable(self, index: int, name: str, layer: str) -> Variable:
        """Variable number ``index`` of the layer (``name`` in legacy files)."""
        raise NotImplementedError


def snake_case(class_name: str) -> str:
    """Keras's snake case of a class name (``BatchNormalization`` -> ``batch_normalization``)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class ArchiveScope(Scope):
    """A scope in a ``.keras`` weights file: a group path."""

    def __init__(self, root: Any, path: str, mapped: tuple[Any, int] | None = None, keep: Any = None) -> None:
        self.root = root
        self.path = path
        self.mapped = mapped
        self.keep = keep
        self._used: dict[str, int] = {}

    def child(self, class_name: str, name: str) -> Scope:
        key = snake_case(class_name)
        count = self._used.get(key)
        self._used[key] = 0 if count is None else count + 1
        suffix = "" if count is None else f"_{count + 1}"
        return ArchiveScope(self.root, f"{self.path}/layers/{key}{suffix}".lstrip("/"), self.mapped, self.keep)

    def attribute(self, attr: str, name: str | None = None) -> Scope:
        return ArchiveScope(self.root, f"{self.path}/{attr}", self.mapped, self.keep)

    def variable(self, index: int, name: str, layer: str) -> Variable:
        where = f"{self.path}/vars/{index}"
        dataset = self.root.get(where)
        if dataset is None or not isinstance(dataset, h5py.Dataset):
            raise ModelFormatError(
                f"the weights file has no variable {where!r} ({name} of layer {layer!r})",
                fix="re-save the model with Keras 3 (model.save('model.keras'))",
            )
        return Variable(dataset, where, self.mapped, self.keep)


class LegacyScope(Scope):
    """A scope in a legacy ``.h5`` file: the group of a top-level layer, and the name of a
    layer inside it. The group's ``weight_names`` attribute lists its variables in order;
    a top-level layer owns its whole group, a layer of a nested model owns the entries
    naming it (``block1_conv1/kernel``, or ``inner/dense/kernel`` in a nested Sequential)."""

    def __init__(
        self, root: Any, group: Any, leaf: str | None, owns_group: bool, mapped: tuple[Any, int] | None = None
    ) -> None:
        self.root = root
        self.mapped = mapped
        self.group = group
        self.leaf = leaf
        self.owns_group = owns_group
        self._names: list[str] | None = None

    def child(self, class_name: str, name: str) -> Scope:
        if self.group is None:  # the model itself: each layer has its own group
            return LegacyScope(self.root, self.root.get(name), name, True, self.mapped)
        return LegacyScope(self.root, self.group, name, False, self.mapped)  # a layer of a nested model

    def attribute(self, attr: str, name: str | None = None) -> Scope:
        if attr in ("forward_layer", "backward_layer"):  # a Bidirectional's directions share its group
            return LegacyScope(self.root, self.group, f"{self.leaf}/{name}", False, self.mapped)
        return LegacyScope(self.root, self.group, name or self.leaf, self.owns_group, self.mapped)

    def _datasets(self) -> list[str]:
        if self._names is None:
            found: list[str] = []
            if self.group is not None:
                self.group.visititems(lambda path, item: found.append(path) if isinstance(item, h5py.Dataset) else None)
            self._names = found
        return self._names

    def _mine(self, path: str) -> bool:
        return self.owns_group or path.startswith(f"{self.leaf}/") or f"/{self.leaf}/" in path

    def variable(self, index: int, name: str, layer: str) -> Variable:
        """By position among the layer's entries of ``weight_names`` (Keras lists a nested
        model's trainable weights before its statistics, but keeps each layer's own
        order), else by variable name."""
        if self.group is None:
            raise ModelFormatError(
                f"the .h5 file has no weights group for layer {layer!r}",
                fix="save the model with its weights (model.save('model.h5'))",
            )
        listed = [n.decode() if isinstance(n, bytes) else str(n) for n in self.group.attrs.get("weight_names", [])]
        mine = [n for n in listed if self._mine(n)]
        if index < len(mine) and mine[index] in self.group:
            return Variable(self.group[mine[index]], f"{self.group.name}/{mine[index]}", self.mapped)
        candidates = [
            path for path in self._datasets() if self._mine(path) and path.rsplit("/", 1)[-1].split(":")[0] == name
        ]
        if not candidates:
            raise ModelFormatError(
                f"the .h5 file has no weight {name!r} for layer {layer!r}",
                fix="save the model with its weights (model.save('model.h5'))",
            )
        path = min(candidates, key=len)
        return Variable(self.group[path], f"{self.group.name}/{path}", self.mapped)


class _Window(io.RawIOBase):
    """A read-only file object over ``length`` bytes at ``offset`` of a memory map."""

    def __init__(self, buffer: mmap.mmap | bytes, offset: int, length: int) -> None:
        super().__init__()
        self.view = memoryview(buffer)[offset : offset + length]
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, target: Any) -> int:
        chunk = self.view[self.position : self.position + len(target)]
        target[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


@dataclass
class KerasFile:
    """An opened Keras model file: its config and the scope of the model's variables."""

    path: Path
    config: dict[str, Any]
    scope: Scope
    keras_version: str
    handles: tuple[Any, ...] = ()


def open_keras(path: Path) -> KerasFile:
    """Open a ``.keras`` archive or a legacy ``.h5`` file (no weight is read)."""
    if h5py is None:
        raise ModelFormatError("reading Keras files needs h5py", fix="pip install h5py")
    regular_file(path, "Keras file")
    if zipfile.is_zipfile(path):
        return _open_archive(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ModelFormatError(
            f"{str(path)!r} is neither a .keras archive nor an HDF5 file ({error})",
            fix="save the model with model.save('model.keras')",
        ) from None
    check_hdf5(handle, str(path))
    return _open_legacy(path, handle)


def check_hdf5(handle: Any, where: str) -> None:
    """Refuse an HDF5 file that makes h5py read other files: an external link (to a
    group or dataset in another file), a dataset with external raw storage, a virtual
    dataset (its data mapped from other files). Walks the links without following them,
    so nothing outside the file is opened, even to look."""

    links: list[tuple[str, Any]] = []

    def _refuse(what: str) -> None:
        raise ModelFormatError(
            f"the HDF5 file {where!r} holds {what}; a model file may only hold its own data",
            fix="save the model again with Keras (model.save()), which writes every weight inside the file",
        )

    try:  # collected first: h5py cannot unwind an exception raised inside its visit
        handle.visititems_links(lambda name, link: links.append((name, link)))
        for name, link in links:
            if isinstance(link, h5py.ExternalLink):
                _refuse(f"an external link {name!r} to {link.filename!r}")
            item = handle.get(name) if isinstance(link, h5py.HardLink) else None
            if isinstance(item, h5py.Dataset) and item.is_virtual:
                _refuse(f"a virtual dataset {name!r} (its data is read from other files)")
            if isinstance(item, h5py.Dataset) and item.id.get_create_plist().get_external_count():
                _refuse(f"a dataset {name!r} stored in an external file")
    except (OSError, RuntimeError, ValueError, KeyError) as error:  # a corrupt link table
        raise ModelFormatError(f"the HDF5 file {where!r} cannot be read ({type(error).__name__}: {error})") from None


def _open_archive(path: Path) -> KerasFile:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ModelFormatError(f"{str(path)!r} is a zip without config.json: not a .keras model")
        config = _json(_member(archive, "config.json", MAX_CONFIG_BYTES, path), path)
        metadata = (
            _json(_member(archive, "metadata.json", MAX_CONFIG_BYTES, path), path) if "metadata.json" in names else {}
        )
        if "model.weights.h5" not in names:
            raise ModelFormatError(
                f"{str(path)!r} has no model.weights.h5",
                fix="save the whole model (model.save('model.keras')), not only its config",
            )
        info = archive.getinfo("model.weights.h5")
        buffer = wire.open_mapped(path)
        mapped = None
        if info.compress_type == zipfile.ZIP_STORED:
            start = _data_offset(buffer, info)
            stream: Any = _Window(buffer, start, info.file_size)
            mapped = (buffer, start)
        else:  # an archive re-zipped with compression: read the weights into memory
            stream = io.BytesIO(_member(archive, "model.weights.h5", memory_budget(), path))
    try:
        weights = h5py.File(stream, "r")
    except OSError as error:
        raise ModelFormatError(f"model.weights.h5 in {str(path)!r} is not readable HDF5 ({error})") from None
    check_hdf5(weights, f"{path}/model.weights.h5")
    handles = (weights, stream, buffer)
    scope = ArchiveScope(weights, "", mapped, handles)
    return KerasFile(path, config, scope, str(metadata.get("keras_version", "")), handles)


#: The most bytes a Keras file's JSON (config.json, metadata.json) may inflate to; real
#: configs of the largest applications models are a few MB.
MAX_CONFIG_BYTES = 64 << 20


def _member(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """A member's bytes, its size (from the archive's directory) checked before it is
    inflated; zipfile stops at that size and checks the CRC, so a header that lies about
    it cannot inflate more."""
    size = archive.getinfo(name).file_size
    if size > limit:
        raise ModelFormatError(
            f"{name} in {str(path)!r} inflates to {human_bytes(size)}, more than the {human_bytes(limit)} "
            "surgery reads for it",
            fix="is this a Keras file? (SURGERY_MEMORY_BUDGET raises the limit for weights)",
        )
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ModelFormatError(f"{name} in {str(path)!r} cannot be read ({error})") from None


def _data_offset(buffer: mmap.mmap | bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (zip format: 30 fixed
    bytes, then the file name and extra field, whose lengths sit at offsets 26 and 28)."""
    header = info.header_offset
    if buffer[header : header + 4] != b"PK\x03\x04":
        raise ModelFormatError("the .keras archive is corrupt (bad local file header)")
    name_length = int.from_bytes(buffer[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(buffer[header + 28 : header + 30], "little")
    return header + 30 + name_length + extra_length


def _open_legacy(path: Path, handle: Any) -> KerasFile:
    text = handle.attrs.get("model_config")
    if text is None:
        raise ModelFormatError(
            f"{str(path)!r} holds weights only (no model_config)",
            fix="save the whole model (model.save('model.h5')), not save_weights",
        )
    config = _json(text.encode() if isinstance(text, str) else bytes(text), path)
    group = handle.get("model_weights", handle)
    version = handle.attrs.get("keras_version", "")
    version = version.decode() if isinstance(version, bytes) else str(version)
    buffer = wire.open_mapped(path)
    return KerasFile(path, config, LegacyScope(group, None, None, False, (buffer, 0)), version, (handle, buffer))


def _json(data: bytes, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, or nested past Python's stack
        raise ModelFormatError(f"the model config in {str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"the model config in {str(path)!r} is not a JSON object")
    return value
