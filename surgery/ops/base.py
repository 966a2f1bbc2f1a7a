"""The spec-operation registry. Each operation is one module holding one function that
checks its preconditions, mutates the net through the :class:`~surgery.ir.Net` API and
returns what it did, as :class:`Action` rows for the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.ir import Net

#: What an action did to a layer.
KEPT, REINITIALISED, DERIVED, DROPPED, ADDED, RENAMED, LR = (
    "kept",
    "reinitialised",
    "derived",
    "dropped",
    "added",
    "renamed",
    "lr",
)


@dataclass(frozen=True)
class Action:
    """One thing an operation did to one layer.

    Attributes:
        op: the operation (``classifier``, ``lr``...).
        layer: the layer's name after the operation.
        what: one of kept / reinitialised / derived / dropped / added / renamed / lr.
        detail: human-readable detail (``num_output 1000 -> 102; weight <- xavier``).
        was: the layer's name before the operation, when the operation renamed it.
        where: the spec position (``file:line:col``) of the edit that did it; set by the
            spec runner, empty for edits made through the Python API.
    """

    op: str
    layer: str
    what: str
    detail: str = ""
    was: str = ""
    where: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"op": self.op, "layer": self.layer, "what": self.what, "detail": self.detail}
        if self.was:
            out["was"] = self.was
        if self.where:
            out["where"] = self.where
        return out


@dataclass
class OpContext:
    """What every operation may read besides the net: the spec's seed, the folder
    relative paths in the spec (calibration files) start from, and whether this is a
    plan (``shapes_only``: weights are not read, so work that needs their values, such
    as a least-squares fit, is described and left to apply)."""

    seed: int = 0
    base_dir: Path | None = None
    shapes_only: bool = False


OpFunction = Callable[[Net, Any, OpContext], list[Action]]
_OPS: dict[str, OpFunction] = {}


def register_op(name: str) -> Callable[[OpFunction], OpFunction]:
    """Register ``fn`` as the operation ``name`` (the field name in ``Edit``). Twice is an error."""

    def decorate(fn: OpFunction) -> OpFunction:
        if name in _OPS:
            raise TypeError(f"operation {name!r} is registered twice")
        _OPS[name] = fn
        return fn

    return decorate


def op_function(name: str) -> OpFunction:
    return _OPS[name]


def registered_ops() -> list[str]:
    return sorted(_OPS)
