"""The records a spec's run hands back: :class:`Plan` (the spec applied in memory) and
:class:`ApplyResult` (what ``apply`` wrote). They live below :mod:`surgery.runner`, which
makes them, so that :mod:`surgery.outputs`, which reads a plan, imports no module that
imports it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery.ir import Net
from surgery.report import Report
from surgery.spec import LoadedSpec


@dataclass
class Plan:
    """A validated spec applied in memory: the edited net and its report."""

    spec: LoadedSpec
    net: Net
    report: Report
    #: The source net as loaded, before the edits: structure only, no weights.
    source: Net
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ApplyResult:
    """What ``apply`` wrote."""

    out_dir: Path
    files: list[Path]
    report: Report
    timings: dict[str, float]
    #: The verify result, when ``apply(..., verify=True)`` ran it.
    verified: Any = None


__all__ = ["ApplyResult", "Plan"]
