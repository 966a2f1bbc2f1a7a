"""Sizes estimated from shapes before anything is allocated.

A spec can ask for a layer of 2**40 outputs or a fit on a billion samples; allocating
first and failing later takes the machine down with it. Every allocation whose size a
spec decides is checked here first and refused with the figure.
"""

from __future__ import annotations

import functools
import math
import os

from surgery.errors import ShapeError, SpecError

#: Overrides the budget (bytes); by default the machine's physical memory.
BUDGET_ENV = "SURGERY_MEMORY_BUDGET"


def memory_budget() -> int:
    """The most bytes one allocation a spec asks for may take: ``SURGERY_MEMORY_BUDGET``
    (a whole number of bytes, or with a suffix: ``500M``, ``8G``) or the machine's memory.

    Raises:
        SpecError: the variable is set to something that is not a size (a typo must not
            silently leave the limit at the machine's memory).
    """
    override = os.environ.get(BUDGET_ENV, "").strip()
    if not override:
        return _physical_memory()
    number, unit = override[:-1] if override[-1:].isalpha() else override, override[-1:].upper()
    scale = _UNITS.get(unit, 1) if override[-1:].isalpha() else 1
    if not number.isdigit() or (override[-1:].isalpha() and unit not in _UNITS):
        raise SpecError(
            f"{BUDGET_ENV}={override!r} is not a number of bytes",
            fix=f"set it to bytes (e.g. {BUDGET_ENV}=8000000000) or with K, M, G or T (8G), or unset it",
        )
    return int(number) * scale


#: Suffixes of SURGERY_MEMORY_BUDGET (decimal, as the messages print sizes).
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


@functools.cache
def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return 64 << 30


def human_bytes(count: float) -> str:
    """``1.5 GB``, ``12 MB``... (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} PB"


def check_bytes(what: str, count: float, *, subject: str | None = None, fix: str | None = None) -> None:
    """Refuse ``what`` when its estimated ``count`` bytes exceed the memory budget."""
    budget = memory_budget()
    if count > budget:
        raise ShapeError(
            f"{what} would take {human_bytes(count)}, more than this machine's {human_bytes(budget)} of memory",
            fix=fix or "make it smaller",
            subject=subject,
        )


def tensor_bytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Bytes of a dense tensor of ``shape`` (exact integers: no overflow)."""
    return math.prod(int(d) for d in shape) * itemsize
