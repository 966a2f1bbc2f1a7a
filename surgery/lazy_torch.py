"""torch, imported on first use.

``inspect``, ``plan`` and ``draw`` of an ONNX, Caffe or Keras model do no torch work, and
importing torch costs more than the rest of such a command (over a second and hundreds of
MiB). Modules that use torch only inside functions import its names from here::

    from surgery.lazy_torch import F, fx, nn, torch

Each name is the real module to a type checker, and at run time a stand-in that imports the
module the first time one of its attributes is read, then caches each attribute it hands
out. What runs at import time (a class attribute, a default argument, a base class) still
imports torch: such code names torch objects by dotted name instead (``"torch.nn.ReLU"``,
resolved by :func:`resolve`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
import types
from typing import TYPE_CHECKING, Any


class _OnFirstUse(types.ModuleType):
    """A module stand-in: the named module is imported when an attribute is first read."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__version__":
            raise AttributeError(attribute)  # copy, pickle and introspection probe these
        value = getattr(importlib.import_module(self.__name__), attribute)
        self.__dict__[attribute] = value  # the next read is a plain lookup
        return value


if TYPE_CHECKING:
    import torch as torch
    import torch.nn.functional as F
    from torch import fx as fx
    from torch import nn as nn
else:
    torch = _OnFirstUse("torch")
    nn = _OnFirstUse("torch.nn")
    F = _OnFirstUse("torch.nn.functional")
    fx = _OnFirstUse("torch.fx")


def resolve(name: Any) -> Any:
    """The object a dotted name stands for (``"torch.nn.ReLU"``, ``"torch.relu"``); anything
    else (a method name such as ``"flatten"``, an object) is returned as it is."""
    if isinstance(name, str) and "." in name:
        return pkgutil.resolve_name(name)
    return name


@functools.cache
def resolve_all(names: tuple[Any, ...]) -> tuple[Any, ...]:
    """:func:`resolve` of each name, once per tuple of names."""
    return tuple(resolve(name) for name in names)


def torch_imported() -> bool:
    """Whether torch has been imported in this process (by anyone)."""
    return "torch" in sys.modules


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, answered without importing torch when nothing
    has imported it yet."""
    return torch_imported() and isinstance(value, torch.Tensor)


def is_torch_module(value: Any) -> bool:
    """Whether ``value`` is an ``nn.Module``, answered without importing torch when nothing
    has imported it yet (then nothing can be one)."""
    return torch_imported() and isinstance(value, nn.Module)


__all__ = ["F", "fx", "is_tensor", "is_torch_module", "nn", "resolve", "resolve_all", "torch", "torch_imported"]
