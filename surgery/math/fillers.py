"""Caffe's weight fillers as pure functions (include/caffe/filler.hpp semantics).

``fill(filler, shape, generator)`` returns a new tensor. Fan-in / fan-out follow
Caffe: ``fan_in = count / shape[0]``, ``fan_out = count / shape[1]``, so a conv weight
(O, C/g, kh, kw) has fan_in (C/g)*kh*kw and an InnerProduct weight (N, K) fan_in K.
Seeds derive from the spec seed and the blob's identity, so a blob's values do not
depend on which other layers the spec touches or in what order.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

from surgery.errors import SpecError
from surgery.lazy_torch import torch
from surgery.protos import enum_name

FILLER_TYPES = ("constant", "gaussian", "uniform", "xavier", "msra", "bilinear", "positive_unitball")
VARIANCE_NORMS = ("FAN_IN", "FAN_OUT", "AVERAGE")


@dataclass(frozen=True)
class Filler:
    """A filler description (Caffe's FillerParameter, same names and defaults)."""

    type: str = "constant"
    value: float = 0.0
    min: float = 0.0
    max: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    variance_norm: str = "FAN_IN"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Filler:
        filler = cls(**values)
        if filler.type not in FILLER_TYPES:
            from surgery.errors import did_you_mean

            raise SpecError(
                f"unknown filler type {filler.type!r}",
                fix=did_you_mean(filler.type, FILLER_TYPES) or f"use one of {', '.join(FILLER_TYPES)}",
                subject=filler.type,
            )
        if filler.variance_norm not in VARIANCE_NORMS:
            raise SpecError(
                f"unknown variance_norm {filler.variance_norm!r}", fix=f"use one of {', '.join(VARIANCE_NORMS)}"
            )
        filler._check_ranges()
        return filler

    def _check_ranges(self) -> None:
        """Refuse values the random draw cannot honour (torch would fail at apply)."""
        for name in ("value", "min", "max", "mean", "std"):
            if not math.isfinite(getattr(self, name)):
                raise SpecError(
                    f"{self.type} filler: {name} must be a finite number, got {getattr(self, name)}", subject=self.type
                )
        if self.type == "gaussian" and self.std < 0:
            raise SpecError(
                f"gaussian filler: std must not be negative, got {self.std:g}",
                subject=self.type,
                fix="use a positive std, e.g. std: 0.01",
            )
        if self.type == "uniform" and self.min > self.max:
            raise SpecError(
                f"uniform filler: min {self.min:g} is above max {self.max:g}", subject=self.type, fix="swap them"
            )

    @classmethod
    def from_proto(cls, message: Any) -> Filler:
        """From a ``surgery.caffe.FillerParameter`` message (unset fields keep Caffe's defaults)."""
        values = {}
        for field in ("type", "value", "min", "max", "mean", "std"):
            if message.HasField(field):
                values[field] = getattr(message, field)
        if message.HasField("variance_norm"):
            values["variance_norm"] = enum_name(message, "variance_norm")
        return cls.from_dict(values)

    def describe(self) -> str:
        """Short text for the report: ``xavier(FAN_IN)``, ``gaussian(std=0.01)``..."""
        if self.type == "constant":
            return f"constant({self.value:g})"
        if self.type == "gaussian":
            return f"gaussian(mean={self.mean:g}, std={self.std:g})"
        if self.type == "uniform":
            return f"uniform({self.min:g}, {self.max:g})"
        if self.type in ("xavier", "msra"):
            return f"{self.type}({self.variance_norm})"
        return self.type

    @property
    def is_all_zero(self) -> bool:
        return (
            (self.type == "constant" and self.value == 0)
            or (self.type == "uniform" and self.min == self.max == 0)
            or (self.type == "gaussian" and self.std == 0 and self.mean == 0)
        )


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    count = math.prod(shape)
    fan_in = count / shape[0] if shape else 1
    fan_out = count / shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _norm(filler: Filler, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[filler.variance_norm]


def _bilinear(shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) != 4 or shape[2] != shape[3]:
        raise SpecError(f"the bilinear filler needs a square 4-D kernel, got {shape}")
    k = shape[3]
    f = math.ceil(k / 2)
    c = (k - 1) / (2 * f)
    axis = 1 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)
    return (axis[:, None] * axis[None, :]).expand(shape).clone()


def fill(
    filler: Filler, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A new tensor of ``shape`` filled as ``filler`` says (computed in float64, then cast
    to ``dtype``, float32 by default, so values do not depend on the target dtype's random
    stream)."""
    shape = tuple(shape)
    kind = filler.type
    if kind == "constant":
        out = torch.full(shape, filler.value, dtype=torch.float64)
    elif kind == "uniform":
        out = torch.empty(shape, dtype=torch.float64).uniform_(filler.min, filler.max, generator=generator)
    elif kind == "gaussian":
        out = torch.empty(shape, dtype=torch.float64).normal_(filler.mean, filler.std, generator=generator)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(filler, shape))
        out = torch.empty(shape, dtype=torch.float64).uniform_(-scale, scale, generator=generator)
    elif kind == "msra":
        out = torch.empty(shape, dtype=torch.float64).normal_(
            0.0, math.sqrt(2.0 / _norm(filler, shape)), generator=generator
        )
    elif kind == "positive_unitball":
        out = torch.empty(shape, dtype=torch.float64).uniform_(0, 1, generator=generator)
        out = out / out.reshape(shape[0], -1).sum(1).reshape(-1, *([1] * (len(shape) - 1)))
    elif kind == "bilinear":
        out = _bilinear(shape)
    else:  # from_dict validated the type
        raise SpecError(f"unknown filler type {kind!r}")
    return out.to(torch.float32 if dtype is None else dtype)


def blob_generator(seed: int, layer: str, role: str) -> torch.Generator:
    """A generator seeded from the spec seed and the blob's identity (stable across
    runs, platforms and edit order)."""
    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + zlib.crc32(f"{layer}\0{role}".encode())) % (2**63))
    return generator
