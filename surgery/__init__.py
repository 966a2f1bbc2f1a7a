"""surgery: declarative model surgery.

Load a pretrained network (PyTorch, ONNX, Caffe) as a graph, edit it with a spec file
or these functions, and emit a trainable PyTorch model (and ONNX), with a report of
where every weight came from.

Example:
    >>> import surgery
    >>> result = surgery.apply("specs/digits_parity.prototxt", "out/digits_parity")
    >>> print(result.report.format_table())
"""

# The names below are loaded on first use (PEP 562), so `import surgery` and the CLI's
# front door (`surgery --help`, `surgery solver`) do not import torch: a command pays for
# torch only when it does torch work.
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from surgery.errors import ModelFormatError, ShapeError, SpecError, SurgeryError

if TYPE_CHECKING:
    from surgery.api import (
        ApplyResult,
        Plan,
        append,
        apply,
        classifier,
        collapse,
        cut,
        draw,
        edit,
        eltwise,
        fc_to_conv,
        features,
        fetch,
        fold_batchnorm,
        insert,
        load,
        lr,
        plan,
        remove,
        replace,
        report,
        save_onnx,
        save_torch,
        sequence,
        split,
        stream,
        to_torch,
    )
    from surgery.emitters.torch_module import load_torch_folder
    from surgery.ir import Layer, Net, ParamBlob
    from surgery.report import Report

__version__ = "0.1.0"

_API = (
    "ApplyResult Plan append apply classifier collapse cut draw edit eltwise fc_to_conv features fetch "
    "fold_batchnorm insert load lr plan remove replace report save_onnx save_torch sequence split stream to_torch"
).split()
_HOMES = dict.fromkeys(_API, "surgery.api") | {
    "load_torch_folder": "surgery.emitters.torch_module",
    "Layer": "surgery.ir",
    "Net": "surgery.ir",
    "ParamBlob": "surgery.ir",
    "Report": "surgery.report",
}


class _Package(types.ModuleType):
    """The package, guarding its public names: importing the submodule ``surgery.report``
    sets the package's attribute ``report`` to that module, which would hide the function
    ``surgery.report`` (the module stays in ``sys.modules``, where imports find it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """A public name from the module that defines it, or a submodule (``surgery.zoo``)."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"surgery.{name}") is not None:
        return importlib.import_module(f"surgery.{name}")
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ApplyResult",
    "Layer",
    "ModelFormatError",
    "Net",
    "ParamBlob",
    "Plan",
    "Report",
    "ShapeError",
    "SpecError",
    "SurgeryError",
    "append",
    "apply",
    "classifier",
    "collapse",
    "cut",
    "draw",
    "edit",
    "eltwise",
    "fc_to_conv",
    "features",
    "fetch",
    "fold_batchnorm",
    "insert",
    "load",
    "load_torch_folder",
    "lr",
    "plan",
    "remove",
    "replace",
    "report",
    "save_onnx",
    "save_torch",
    "sequence",
    "split",
    "stream",
    "to_torch",
]
