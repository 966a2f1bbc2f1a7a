"""Parameter blobs: a layer's weights, with their learning-rate multipliers and origin.

A blob may be *lazy*: it knows its shape and dtype but reads its data only on first
use (from a memory-mapped checkpoint, an ONNX initializer, a caffemodel), so that
``inspect`` and ``plan`` never read weights and untouched weights pass from source to
output without a copy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surgery.errors import SpecError
from surgery.lazy_torch import torch


def check_multiplier(value: float, what: str, subject: str | None = None) -> float:
    """``value`` if it is a usable lr_mult / decay_mult (finite, not negative); else a
    SpecError naming ``what``. Every place a multiplier enters the IR calls this, so an
    ``lr { }`` edit, a new layer's ``param { }`` and a Caffe prototxt obey one rule."""
    if not math.isfinite(value) or value < 0:
        raise SpecError(
            f"{what} must be a finite number >= 0, got {value}",
            fix="use 0 to freeze, 1 for the base rate, 10 to learn ten times faster",
            subject=subject,
        )
    return float(value)


@dataclass(frozen=True)
class Origin:
    """Where a blob's values came from.

    kind is one of ``source`` (copied from the pretrained model), ``filler`` (freshly
    initialised: detail names the filler and seed), ``derived`` (computed from other
    blobs, e.g. a folded BatchNorm: detail says from what), ``resized`` (source values
    sliced or padded to a new shape).
    """

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


SOURCE = Origin("source")


#: Element types numpy does not have.
_ITEMSIZE = {"bfloat16": 2}


def dtype_name(dtype: Any) -> str:
    """A torch or numpy dtype (or a name) as the name both libraries give it: ``"float32"``."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if type(dtype).__module__ == "torch":  # a torch.dtype, told apart without importing torch
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


def _tensor_of(read: Callable[[], np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(read())


def _full(shape: tuple[int, ...], value: float) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.float32)


@dataclass
class ParamBlob:
    """One parameter or buffer of a layer.

    Attributes:
        shape: the blob's shape (known without reading data).
        dtype_name: the blob's element type by name (``"float32"``, as numpy and torch both
            spell it), so a blob is made and planned without torch; :attr:`dtype` is torch's.
        lr_mult: learning-rate multiplier (0 = frozen). Meaningless for buffers.
        decay_mult: weight-decay multiplier.
        trainable: False for buffers (BatchNorm running statistics), which never get
            gradients whatever their lr_mult.
        origin: where the values came from.
    """

    shape: tuple[int, ...]
    dtype_name: str = "float32"
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    trainable: bool = True
    origin: Origin = SOURCE
    _data: torch.Tensor | None = field(default=None, repr=False)
    _loader: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    #: Reads the values as the file stores them (a numpy array), for :meth:`array`.
    _array_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, **kwargs) -> ParamBlob:
        """A blob holding ``tensor`` (not copied)."""
        return cls(shape=tuple(tensor.shape), dtype_name=dtype_name(tensor.dtype), _data=tensor.detach(), **kwargs)

    @classmethod
    def lazy(cls, shape: tuple[int, ...], dtype: Any, loader: Callable[[], torch.Tensor], **kwargs) -> ParamBlob:
        """A blob whose data is read by ``loader`` on first use. ``dtype``: a torch or numpy
        dtype, or its name."""
        return cls(shape=tuple(shape), dtype_name=dtype_name(dtype), _loader=loader, **kwargs)

    @classmethod
    def from_file(cls, shape: tuple[int, ...], dtype: Any, read: Callable[[], np.ndarray], **kwargs) -> ParamBlob:
        """A blob whose values a model file holds: ``read`` returns them as a numpy array on
        first use. :meth:`array` hands them on without torch (an ONNX output written from
        an ONNX, Caffe or Keras source); :attr:`data` wraps them in a tensor."""
        loader = functools.partial(_tensor_of, read)
        return cls(shape=tuple(shape), dtype_name=dtype_name(dtype), _loader=loader, _array_loader=read, **kwargs)

    @classmethod
    def filled(cls, shape: tuple[int, ...], value: float, **kwargs) -> ParamBlob:
        """A float32 blob of ``value`` everywhere, made on first use (an importer's zero
        bias or unit scale where the source stores none)."""
        shape = tuple(shape)
        return cls.lazy(shape, "float32", functools.partial(_full, shape, value), **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The blob's torch dtype (imports torch; :attr:`dtype_name` does not)."""
        return getattr(torch, self.dtype_name)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE.get(self.dtype_name) or np.dtype(self.dtype_name).itemsize

    @property
    def is_loaded(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> torch.Tensor:
        """The values; read from the source on first access."""
        if self._data is None:
            if self._loader is None:
                raise RuntimeError("blob has neither data nor a loader")
            tensor = self._loader()
            if tuple(tensor.shape) != self.shape:
                raise RuntimeError(f"blob loader returned shape {tuple(tensor.shape)}, expected {self.shape}")
            self._data = tensor
            self._loader = self._array_loader = None
        return self._data

    def array(self) -> np.ndarray:
        """The values as a numpy array: read from the model file without torch while they
        are still the file's (see :meth:`from_file`), else the tensor's."""
        if self._data is None and self._array_loader is not None:
            values = self._array_loader()
            if tuple(values.shape) != self.shape:
                raise RuntimeError(f"blob reader returned shape {tuple(values.shape)}, expected {self.shape}")
            return values
        return self.data.detach().cpu().contiguous().numpy()

    def set_data(self, tensor: torch.Tensor, origin: Origin) -> None:
        """Replace the values (and shape) of this blob, recording where they came from."""
        self._data = tensor.detach()
        self._loader = self._array_loader = None
        self.shape = tuple(tensor.shape)
        self.dtype_name = dtype_name(tensor.dtype)
        self.origin = origin

    def derive(self, compute: Callable[[], torch.Tensor], origin: Origin, shape: tuple[int, ...] | None = None) -> None:
        """Replace the values with ``compute()``, run when the data is first used (``plan``
        never uses it: an op computing from weights stays a plan that reads none).
        ``compute`` reads its inputs from :meth:`snapshot` copies, never from this blob."""
        self._data = None
        self._loader, self._array_loader = compute, None
        self.shape = tuple(shape) if shape is not None else self.shape
        self.origin = origin

    def snapshot(self) -> ParamBlob:
        """A copy holding these values as they are now (shared, not copied; read on use)."""
        return dataclasses.replace(self)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def frozen(self) -> bool:
        return not self.trainable or self.lr_mult == 0


class Inputs:
    """The blobs a derived blob computes from, as they are now (``snapshot()`` copies, read
    on first use), by ``"<owner>.<role>"``: ``Inputs(layer=conv.blobs, bn=bn.blobs)``."""

    def __init__(self, **owners: dict[str, ParamBlob]) -> None:
        self._blobs = {f"{owner}.{role}": b.snapshot() for owner, blobs in owners.items() for role, b in blobs.items()}

    def data(self, name: str) -> torch.Tensor | None:
        """The values of ``name`` (None when that blob is absent: a layer without a bias)."""
        blob = self._blobs.get(name)
        return blob.data if blob is not None else None

    def required(self, name: str) -> torch.Tensor:
        """The values of ``name``, a blob its layer always has (a convolution's weight)."""
        return self._blobs[name].data
