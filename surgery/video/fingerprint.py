"""What made a folder of features: the backbone (its layers and weights), the
preprocessing and the sampling, each as a sha256, kept in the folder's state. A rerun
reuses finished clips only when all three are the same; otherwise it refuses, naming what
changed, unless told to start over (``--force``), which removes the old features first."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError, option
from surgery.ir import Net

FILE = "fingerprint.json"


def fingerprint(backbone: Net, preprocess: Any, sampling: Any) -> dict[str, str]:
    """sha256 of the backbone (layer names, types, input shape, every weight's bytes), of
    the preprocessing's values and of the sampling."""
    model = hashlib.sha256()
    for layer in backbone.layers():
        model.update(f"{layer.name}\0{layer.type}\0".encode())
        if layer.type == "Input":
            model.update(repr(tuple(layer.params["shape"][1:])).encode())
        for role, blob in sorted(layer.blobs.items()):
            values = blob.array()
            model.update(f"{role}\0{values.dtype}\0{values.shape}\0".encode())
            model.update(values.tobytes())
    steps = {k: v for k, v in preprocess.to_dict().items() if k != "origin"} if preprocess is not None else None
    return {
        "model": model.hexdigest(),
        "preprocess": _digest(steps),
        "sampling": _digest(sampling.describe()),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def check(state: Path, current: dict[str, str], *, has_outputs: bool, force: bool, writer: bool) -> bool:
    """Compare ``current`` with the fingerprint kept in ``state``; True when the folder's
    old features must go first (``force`` and something changed).

    Args:
        state: the features folder's state folder.
        current: this run's :func:`fingerprint`.
        has_outputs: the folder holds records of earlier runs.
        force: start over where something changed, instead of refusing.
        writer: this process writes the fingerprint (one rank of a torchrun group).

    Raises:
        SurgeryError: something changed (or earlier records carry no fingerprint) and not ``force``.
    """
    path = state / FILE
    try:
        kept = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        kept = {}
    changed = [] if kept is None and not has_outputs else [k for k in current if (kept or {}).get(k) != current[k]]
    if changed and not force:
        what = ", ".join(changed) if kept else "no record of what made them (an earlier version of surgery)"
        raise SurgeryError(
            f"{str(state.parent)!r} holds features made with another {what}; reusing them would mix the two",
            fix=f"give a new {option('-o', 'out_dir')} folder, or pass {option('--force', 'force=True')} to "
            "recompute every clip into this one",
        )
    if writer and (changed or kept is None):
        state.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{FILE}.partial")
        temp.write_text(json.dumps(current, indent=1) + "\n")
        temp.replace(path)
    return bool(changed)
