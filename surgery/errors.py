"""The one exception family of surgery.

Every error a user can cause (a bad spec, a missing layer, a shape that does not
fit, a corrupt file) is a :class:`SurgeryError`. Its message says what went wrong,
where (``file:line:col`` when the error comes from a spec), and how to fix it.
The CLI prints ``str(error)`` and exits with code 2; no traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Iterable, Iterator


class SurgeryError(Exception):
    """A user-facing error: what, where, and the fix.

    Args:
        message: what went wrong, in one sentence.
        fix: how to fix it (optional).
        location: ``file:line:col`` or a file path (optional; the spec runner
            fills it in for errors raised by operations).
        subject: the spec value the error is about (a layer name, a glob); the
            spec runner uses it to find the line in the spec file.
    """

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        location: str | None = None,
        subject: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.location = location
        self.subject = subject

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class SurgeryNote(UserWarning):
    """Something the user should know that is not an error (a fallback taken). The CLI
    prints it as one ``note:`` line."""


class SpecError(SurgeryError):
    """The spec is malformed or asks for something the graph does not allow."""


class ModelFormatError(SurgeryError):
    """A model file (Caffe, ONNX, torch) is corrupt or uses something unsupported."""


class ShapeError(SurgeryError):
    """Shapes do not agree: a layer's input does not fit its parameters."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str | None:
    """A 'did you mean' hint for a misspelt ``name``, or None when nothing is close."""
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in pool}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown_layer(name: str, known: Iterable[str], what: str = "layer") -> SpecError:
    """The error for a layer name the net does not have, with a did-you-mean."""
    hint = did_you_mean(name, known)
    return SpecError(
        f"no {what} named {name!r} in the net",
        fix=hint or "run `surgery inspect MODEL` to list the layer names a spec can use",
        subject=name,
    )


def unsupported_in_onnx(layer, why: str | None = None) -> ModelFormatError:
    """The error for a layer (anything with ``name`` and ``type``) that has no ONNX form."""
    return ModelFormatError(
        f"layer {layer.name!r} ({layer.type}) cannot be written to ONNX" + (f": {why}" if why else ""),
        fix="replace or remove it in the spec, or emit PyTorch only",
        subject=layer.name,
    )


def unsupported_in_caffe(layer, why: str = "") -> ModelFormatError:
    """The error for a layer (anything with ``name`` and ``type``) that has no Caffe form."""
    return ModelFormatError(
        f"layer {layer.name!r} ({layer.type}) cannot be written to Caffe{': ' + why if why else ''}",
        fix="replace or remove it in the spec, or emit PyTorch / ONNX only",
        subject=layer.name,
    )


_from_cli: contextvars.ContextVar[bool] = contextvars.ContextVar("surgery_from_cli", default=False)


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Within the block, :func:`option` names command-line options (the CLI runs each
    command in one); elsewhere it names the Python API's arguments."""
    token = _from_cli.set(True)
    try:
        yield
    finally:
        _from_cli.reset(token)


def option(cli: str, api: str) -> str:
    """How a fix names a setting to the person reading it: ``--force`` at the command
    line, ``force=True`` to a Python caller."""
    return cli if _from_cli.get() else api
