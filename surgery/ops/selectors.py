"""Layer selectors: exact names, globs, regexes, "everything up to X". Each selector
must match at least one layer: one that matches nothing is an error, not a no-op.

Where a spec names one position in the net (``cut { at }``, ``up_to``, ``insert { after }``,
a new layer's ``bottom``), :func:`place` resolves the name: a layer, or the path of a
composite module of a torch source (``layer3.1``), standing for its output."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from surgery.errors import SpecError, did_you_mean, unknown_layer
from surgery.ir import Net

_GLOB_CHARS = set("*?[")


def is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


def match_name(net: Net, name: str) -> list[str]:
    """An exact layer name, or a glob when it contains * ? [."""
    if not is_glob(name):
        net.layer(name)  # raises with a did-you-mean
        return [name]
    return match_glob(net, name)


def match_glob(net: Net, pattern: str) -> list[str]:
    found = [n for n in net.layer_names() if fnmatch.fnmatchcase(n, pattern)]
    if not found:
        prefix = pattern.split("*")[0].split("?")[0].split("[")[0]
        hint = did_you_mean(prefix, net.layer_names()) if prefix else None
        raise SpecError(
            f"the glob {pattern!r} matches no layer",
            fix=hint or "run `surgery inspect` to list the layer names",
            subject=pattern,
        )
    return found


def match_regex(net: Net, pattern: str) -> list[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise SpecError(f"invalid regex {pattern!r}: {error}", subject=pattern) from None
    found = [n for n in net.layer_names() if compiled.fullmatch(n)]
    if not found:
        raise SpecError(f"the regex {pattern!r} matches no layer (it must match a whole name)", subject=pattern)
    return found


@dataclass(frozen=True)
class Place:
    """A position a spec named: the layer it means and the blob(s) there.

    Attributes:
        written: the name as the spec wrote it.
        layer: the layer it means (for a module path: the layer computing its output).
        blobs: the blobs it means: the layer's outputs, or the one blob named (a blob
            name, a module's output).
    """

    written: str
    layer: str
    blobs: tuple[str, ...]

    def __str__(self) -> str:
        """``'conv1'``, or ``'layer3' (module; its output is layer 'layer3.1.relu@1')``
        for the report."""
        if self.written == self.layer:
            return repr(self.written)
        return f"{self.written!r} (module; its output is layer {self.layer!r})"


def place(net: Net, name: str, *, blobs: bool = False) -> Place:
    """The position ``name`` means: a layer name, else (with ``blobs``) a blob name, else a
    composite module's path (a torch source's ``layer3.1`` or
    ``encoder.layers.encoder_layer_5``: fx traces through it, and its output is the blob
    computed last inside it that is read outside it). A name that is none of these gets a
    did-you-mean over all of them.
    """
    if name in net:
        return Place(name, name, tuple(net.layer(name).outputs))
    if blobs and net.has_blob(name):
        return Place(name, net.producer(name).name, (name,))
    blob = net.module_output(name)  # raises when the module has no single output any more
    if blob is None:
        known = [*net.layer_names(), *net.module_paths(), *(net.blob_names() if blobs else ())]
        raise unknown_layer(name, known, what="blob or layer" if blobs else "layer")
    return Place(name, net.producer(blob).name, (blob,))


def up_to(net: Net, name: str) -> list[str]:
    """``name`` (a layer or a module path, see :func:`place`) and every layer it depends
    on, in execution order."""
    last = place(net, name).layer
    keep = net.ancestors(last) | {last}
    return [n for n in net.layer_names() if n in keep]


def select(
    net: Net,
    *,
    names: Iterable[str] = (),
    globs: Iterable[str] = (),
    regexes: Iterable[str] = (),
    up_to_layer: str | None = None,
) -> list[str]:
    """The union of every selector's matches, in execution order, without repeats."""
    chosen: set[str] = set()
    for name in names:
        chosen.update(match_name(net, name))
    for pattern in globs:
        chosen.update(match_glob(net, pattern))
    for pattern in regexes:
        chosen.update(match_regex(net, pattern))
    if up_to_layer:
        chosen.update(up_to(net, up_to_layer))
    return [n for n in net.layer_names() if n in chosen]
