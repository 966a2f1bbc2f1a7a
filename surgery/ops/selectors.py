"""Layer selectors: exact names, globs, regexes, "everything up to X". Each selector
must match at least one layer: one that matches nothing is an error, not a no-op."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

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


def up_to(net: Net, name: str) -> list[str]:
    """``name`` and every layer it depends on, in execution order."""
    if name not in net:
        raise unknown_layer(name, net.layer_names())
    keep = net.ancestors(name) | {name}
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
