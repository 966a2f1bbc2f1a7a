"""The table of layer kinds, by type name.

The IR needs one thing from a layer type: its shape rule (``infer_shapes``). The table
lives here, on the IR's floor, so :class:`~surgery.ir.Net` can infer shapes without
importing the layer package above it; ``surgery.layers.register_layer`` fills it (one
explicit decorator per layer-type class).
"""

from __future__ import annotations

from typing import Any

from surgery.errors import ModelFormatError, did_you_mean

_KINDS: dict[str, Any] = {}


def add_kind(name: str, kind: Any) -> None:
    """Enter ``kind`` (an object with ``infer_shapes``) under ``name``. Twice is an error."""
    if name in _KINDS:
        raise TypeError(f"layer type {name!r} is registered twice ({type(kind).__name__})")
    _KINDS[name] = kind


def kind_of(name: str) -> Any:
    """The layer kind registered as ``name``."""
    try:
        return _KINDS[name]
    except KeyError:
        hint = did_you_mean(name, _KINDS)
        raise ModelFormatError(
            f"unknown layer type {name!r}",
            fix=hint or f"supported types: {', '.join(sorted(_KINDS))}",
            subject=name,
        ) from None


def all_kinds() -> dict[str, Any]:
    """Every registered kind by name (a copy)."""
    return dict(_KINDS)
