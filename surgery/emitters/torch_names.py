"""Attribute paths and argument names of emitted models, from untrusted layer names.

Layer and blob names come from model files and specs: any text at all (quotes,
newlines, keywords, ``..a..b``, 10k characters). The generated source must not depend on
them being well formed, so every module a layer owns is registered under an *attribute
path* made of plain parts, and the original names stay data (``MODULE_PATHS`` in the
generated class, the report, the ONNX file).

A name whose dot-separated parts are all plain keeps its path, so a torch module path
(``features.0``) or a Caffe name (``loss3/classifier``) keeps its state_dict keys.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable

from surgery.layers.runtime import SurgeryModule
from surgery.lazy_torch import nn

#: Characters a kept path part may hold: those of torch module paths, Caffe and ONNX
#: names (``conv1/7x7_s2``, ``act@1``, ``model:conv``). None of them needs quoting.
_PLAIN_PART = re.compile(r"[A-Za-z0-9_/:@\-]+")
_ILLEGAL = re.compile(r"[^A-Za-z0-9_/:@\-]+")
_MAX_PART = 64

#: Attributes of the generated class and of nn.Module: a submodule may not shadow them.
_GENERATED_ATTRIBUTES = {
    "LR_MULTS",
    "OUTPUTS",
    "MODULE_PATHS",
    "NET_NAME",
    "_forward_train",
    "_forward_eval",
    "surgery_source",
    "self",
}
_TOP_RESERVED = frozenset(dir(SurgeryModule)) | frozenset(vars(nn.Module())) | _GENERATED_ATTRIBUTES
_INNER_RESERVED = frozenset(dir(nn.Module)) | frozenset(vars(nn.Module()))


def _plain(part: str, reserved: frozenset[str]) -> bool:
    # fx names a node after its module's path, lower-cased: "Self" would become `self`.
    return (
        _PLAIN_PART.fullmatch(part) is not None
        and len(part) <= _MAX_PART
        and not keyword.iskeyword(part)
        and part not in reserved
        and part.lower() != "self"
    )


def _keeps_path(name: str) -> bool:
    parts = name.split(".")
    return _plain(parts[0], _TOP_RESERVED) and all(_plain(p, _INNER_RESERVED) for p in parts[1:])


def _flat(name: str) -> str:
    """One plain part standing for ``name`` (the start of it, illegal runs as ``_``)."""
    part = _ILLEGAL.sub("_", name.replace(".", "_"))[:_MAX_PART].strip("_") or "layer"
    if keyword.iskeyword(part) or part in _TOP_RESERVED or part.lower() == "self":
        part += "_layer"
    return part


def module_paths(names: Iterable[str]) -> dict[str, str]:
    """Layer name -> attribute path of its module, for every module-owning layer.

    Plain names keep their path; the others get one flat, unique part. A path never
    equals or lies inside another layer's module (each module is a leaf of plain
    containers), and two layers never share one.
    """
    names = list(names)
    paths: dict[str, str] = {}
    taken: set[str] = set()  # every path and every container prefix in use
    leaves: set[str] = set()

    def free(path: str) -> bool:
        parts = path.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
        return path not in taken and not prefixes & leaves

    def claim(name: str, path: str) -> None:
        parts = path.split(".")
        taken.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        leaves.add(path)
        paths[name] = path

    kept = [n for n in names if _keeps_path(n)]
    kept_leaves = set(kept)
    for name in kept:  # a path below another layer's module cannot stay nested in it
        parts = name.split(".")
        if not any(".".join(parts[:i]) in kept_leaves for i in range(1, len(parts))) and free(name):
            claim(name, name)
    for name in names:
        if name in paths:
            continue
        base = _flat(name)
        path, number = base, 1
        while not free(path):
            number += 1
            path = f"{base}_{number}"
        claim(name, path)
    return {name: paths[name] for name in names}
