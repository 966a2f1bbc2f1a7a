"""Caffe solver definitions: read with protobuf, checked as Caffe checks them, described.

:func:`solver_settings` turns a ``SolverParameter`` into the plain dict an emitted model
carries (``SOLVER`` in ``model.py``) and :mod:`surgery.solver.runtime` runs: the fields
that change the numbers, as the float32 values Caffe holds. Fields that only steer
Caffe's own loop (display, snapshots, test passes, the net's path) are kept apart for the
report; fields that the chosen type or policy never reads are noted, not used.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from surgery.errors import SpecError, did_you_mean
from surgery.protos import enum_name
from surgery.solver.rates import LR_POLICIES, SOLVER_TYPES, caffe_rate
from surgery.spec.loader import MAX_SPEC_BYTES, LoadedSpec, decode_text
from surgery.spec.schema import caffe_class

#: What each Caffe solver type reads besides the rate, decay, clip and iter_size.
_TYPE_FIELDS = {
    "SGD": ("momentum",),
    "Nesterov": ("momentum",),
    "AdaGrad": ("delta",),
    "RMSProp": ("delta", "rms_decay"),
    "AdaDelta": ("momentum", "delta"),
    "Adam": ("momentum", "momentum2", "delta"),
}
#: What each LR policy reads besides base_lr.
_POLICY_FIELDS = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power", "max_iter"),
    "sigmoid": ("gamma", "stepsize"),
}
#: Fields that steer Caffe's loop, not the update: kept in the report.
_LOOP_FIELDS = (
    "net",
    "train_net",
    "test_net",
    "test_iter",
    "test_interval",
    "test_compute_loss",
    "test_initialization",
    "display",
    "average_loss",
    "snapshot",
    "snapshot_prefix",
    "snapshot_diff",
    "snapshot_format",
    "snapshot_after_train",
    "solver_mode",
    "device_id",
    "random_seed",
    "debug_info",
    "layer_wise_reduce",
    "weights",
)
_NUMERIC = ("base_lr", "gamma", "power", "momentum", "momentum2", "delta", "rms_decay", "weight_decay")


class SolverText:
    """A solver file's text, to locate a field's line in errors (``where`` None: the
    fields sit inside a spec, whose own locator places the error)."""

    def __init__(self, text: str, where: str | None) -> None:
        self.text, self.where = text, where

    def at(self, field: str) -> str | None:
        if self.where is None:
            return None
        found = re.search(rf"^\s*{re.escape(field)}\s*:", self.text, re.MULTILINE)
        if found is None:
            return self.where
        return f"{self.where}:{self.text.count(chr(10), 0, found.start()) + 1}"


def spec_solver(loaded: LoadedSpec) -> dict[str, Any] | None:
    """The checked settings of a spec's ``solver { }`` (its file or its inline fields),
    or None when the spec names none; errors are located in the spec or the file."""
    message = loaded.message
    if not message.HasField("solver"):
        return None
    kind = message.solver.WhichOneof("from")
    with loaded.located("solver"):
        if kind is None:
            raise SpecError(
                "solver { } names no solver",
                fix='solver { caffe: "solver.prototxt" } or solver { caffe_fields { base_lr: ... } }',
            )
        if kind == "caffe":
            try:
                parsed, text = read_solver(loaded.base_dir / message.solver.caffe)
            except SpecError as error:
                if error.location is not None:  # located in the solver file: say which spec line named it
                    error.message += f" (the solver named at {loaded.locator.section('solver', message.solver.caffe)})"
                raise
        else:
            parsed, text = message.solver.caffe_fields, SolverText("", None)
        return solver_settings(parsed, text)


def read_solver(path: str | Path) -> tuple[Any, SolverText]:
    """A ``SolverParameter`` from a solver.prototxt; errors carry ``file:line:col``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            f"solver {str(path)!r} does not exist" if not path.exists() else f"solver {str(path)!r} is not a file",
            fix="name a Caffe solver.prototxt (base_lr, lr_policy, ...)",
            subject=str(path),
        )
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:  # a solver is a few lines of text, like a spec
        raise SpecError(
            f"solver {str(path)!r} has {size} bytes; a solver.prototxt is text of at most {MAX_SPEC_BYTES}",
            location=f"{path}:1:1",
            fix="name the solver.prototxt (base_lr, lr_policy, ...), not a model file",
        )
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SpecError(f"cannot read solver {str(path)!r}: {error.strerror or error}", subject=str(path)) from None
    text = decode_text(raw, str(path), SpecError)
    message = caffe_class("SolverParameter")()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        reason = re.sub(r"^\d+:\d+ : ", "", str(error))
        where = f"{path}:{error.GetLine()}:{error.GetColumn()}"
        if re.search(r'has no field named "(layer|layers|input|name)"', reason):
            raise SpecError(
                "this is a Caffe network definition, not a solver",
                location=where,
                fix="name the solver.prototxt (its `net:` field names this file)",
            ) from None
        field = re.search(r'has no field named "(\w+)"', reason)
        fix = None
        if field:
            fields = [f.name for f in message.DESCRIPTOR.fields]
            fix = did_you_mean(field.group(1), fields) or "see `surgery solver --help` for the fields Caffe knows"
        raise SpecError(reason, location=where, fix=fix) from None
    return message, SolverText(text, str(path))


def solver_settings(message: Any, text: SolverText) -> dict[str, Any]:
    """The checked settings of a ``SolverParameter``: ``type``, ``lr_policy``, the
    numbers the update reads, ``kept`` (loop-only fields) and ``notes`` (fields set
    that this type and policy do not read). Bad values raise a located SpecError."""
    solver_type = _solver_type(message, text)
    policy = message.lr_policy
    if policy not in LR_POLICIES:
        hint = did_you_mean(policy, LR_POLICIES) if policy else None
        raise SpecError(
            f"lr_policy {policy!r} is not one Caffe knows" if policy else "the solver sets no lr_policy",
            location=text.at("lr_policy"),
            fix=hint or f"one of {', '.join(LR_POLICIES)}",
            subject="lr_policy",
        )
    for name in _NUMERIC:
        value = getattr(message, name)
        if not math.isfinite(value):
            raise SpecError(
                f"{name} is {value}", location=text.at(name), fix=f"give {name} a finite number", subject=name
            )
    if message.base_lr < 0:
        where = text.at("base_lr")
        raise SpecError(
            f"base_lr {message.base_lr:g} is negative", location=where, fix="a rate >= 0", subject="base_lr"
        )
    settings: dict[str, Any] = {
        "type": solver_type,
        "lr_policy": policy,
        "base_lr": message.base_lr,
        "weight_decay": message.weight_decay,
        "regularization_type": message.regularization_type,
        "clip_gradients": message.clip_gradients,
        "iter_size": message.iter_size,
        "max_iter": message.max_iter,
    }
    for name in (*_TYPE_FIELDS[solver_type], *_POLICY_FIELDS[policy]):
        value = getattr(message, name)
        settings[name] = list(value) if name == "stepvalue" else value
    _check({**settings, "momentum": message.momentum}, text)
    settings["kept"] = {name: _plain(message, name) for name in _LOOP_FIELDS if _is_set(message, name)}
    read = {*settings, "solver_type"}
    settings["notes"] = [
        f"{name} is set but a {solver_type} solver with lr_policy {policy!r} does not read it"
        for name in ("gamma", "power", "stepsize", "stepvalue", "momentum", "momentum2", "delta", "rms_decay")
        if name not in read and _is_set(message, name)
    ]
    return settings


def _solver_type(message: Any, text: SolverText) -> str:
    if message.HasField("solver_type"):
        if message.HasField("type"):
            raise SpecError(
                "the solver sets both `type` and the deprecated `solver_type`",
                location=text.at("solver_type"),
                fix="keep `type` only",
                subject="solver_type",
            )
        enum = enum_name(message, "solver_type")
        return {name.upper(): name for name in SOLVER_TYPES}[enum]
    if message.type not in SOLVER_TYPES:
        raise SpecError(
            f"solver type {message.type!r} is not one Caffe knows (the names are case-sensitive)",
            location=text.at("type"),
            fix=did_you_mean(message.type, SOLVER_TYPES) or f"one of {', '.join(SOLVER_TYPES)}",
            subject="type",
        )
    return message.type


def _check(s: dict[str, Any], text: SolverText) -> None:
    """Caffe's CHECKs (and the values that would give it an infinite or NaN rate)."""
    policy, solver_type = s["lr_policy"], s["type"]

    def refuse(field: str, what: str, fix: str) -> None:
        raise SpecError(what, location=text.at(field), fix=fix, subject=field)

    if policy in ("step", "sigmoid") and s["stepsize"] <= 0:
        refuse("stepsize", f"lr_policy {policy!r} needs stepsize > 0 (got {s['stepsize']})", "set stepsize: N")
    if policy in ("step", "exp", "multistep", "sigmoid") and s["gamma"] < 0:
        refuse("gamma", f"gamma {s['gamma']:g} is negative; Caffe refuses it for {policy!r}", "a gamma >= 0")
    if policy == "poly" and s["max_iter"] <= 0:
        refuse("max_iter", "lr_policy 'poly' divides by max_iter, which is 0", "set max_iter: N (the last update)")
    if policy == "multistep":
        values = s["stepvalue"]
        if not values:
            refuse("lr_policy", "lr_policy 'multistep' needs stepvalue entries", "add stepvalue: N lines, increasing")
        if values[0] < 0 or any(b <= a for a, b in itertools.pairwise(values)):
            refuse("stepvalue", f"stepvalue {values} is not increasing", "list the iterations in increasing order")
    if s["iter_size"] < 1:
        refuse("iter_size", f"iter_size {s['iter_size']} is below 1", "iter_size: 1 or more")
    if s["max_iter"] < 0:
        refuse("max_iter", f"max_iter {s['max_iter']} is negative", "max_iter: the number of updates")
    if solver_type in ("AdaGrad", "RMSProp") and s.get("momentum", 0.0) != 0:
        refuse("momentum", f"a {solver_type} solver takes no momentum (Caffe checks it is 0)", "remove momentum")
    if solver_type == "RMSProp" and not 0 <= s["rms_decay"] < 1:
        refuse("rms_decay", f"rms_decay {s['rms_decay']:g} is outside [0, 1)", "a decay like 0.98")
    if s["weight_decay"] != 0 and s["regularization_type"] not in ("L1", "L2"):
        refuse(
            "regularization_type",
            f"regularization_type {s['regularization_type']!r} is not L1 or L2",
            'regularization_type: "L2" (the default) or "L1"',
        )


def _is_set(message: Any, name: str) -> bool:
    if message.DESCRIPTOR.fields_by_name[name].is_repeated:
        return len(getattr(message, name)) > 0
    return message.HasField(name)


def _plain(message: Any, name: str) -> Any:
    value = getattr(message, name)
    if message.DESCRIPTOR.fields_by_name[name].enum_type is not None:
        return enum_name(message, name)
    if hasattr(value, "ListFields"):
        return text_format.MessageToString(value, as_one_line=True)
    if not isinstance(value, (str, int, float, bool)):
        return list(value)
    return value


def describe(settings: dict[str, Any], iterations: int = 6) -> list[str]:
    """What a solver means, in lines: the update, the schedule, where the rate changes."""
    s = settings
    lines = [f"type {s['type']}: {_RULES[s['type']].format(**s)}"]
    decay = s["weight_decay"]
    if decay:
        lines.append(f"weight decay {decay:g} ({s['regularization_type']}) x each parameter's decay_mult")
    if s["clip_gradients"] >= 0:
        lines.append(f"gradients clipped to global L2 norm {s['clip_gradients']:g} (on the sum, before decay)")
    if s["iter_size"] != 1:
        lines.append(f"iter_size {s['iter_size']}: gradients of that many micro-batches summed, then scaled by 1/N")
    lines.append(f"lr_policy {s['lr_policy']}: {_POLICIES[s['lr_policy']].format(**s)}")
    end = s["max_iter"] or 1
    points = sorted({0, *_changes(s, end, iterations), end - 1})
    lines.append("rate at iteration: " + ", ".join(f"{i}: {caffe_rate(s, i):.6g}" for i in points if i < end))
    if s["max_iter"]:
        lines.append(f"max_iter {s['max_iter']} updates")
    lines += [f"note: {note}" for note in s["notes"]]
    if s["kept"]:
        lines.append("kept for the report: " + ", ".join(f"{k} {v}" for k, v in s["kept"].items()))
    return lines


def _changes(s: dict[str, Any], end: int, count: int) -> list[int]:
    """The first iterations where a step-like schedule changes the rate."""
    if s["lr_policy"] == "step":
        return [s["stepsize"] * k for k in range(1, count) if s["stepsize"] * k < end]
    if s["lr_policy"] == "multistep":
        return [v for v in s["stepvalue"] if v < end][:count]
    if s["lr_policy"] in ("poly", "inv", "exp", "sigmoid"):
        return [end * k // 4 for k in range(1, 4)]
    return []


_RULES = {
    "SGD": "h = momentum*h + rate*g; w -= h (momentum {momentum:g}; the rate inside the history)",
    "Nesterov": "h = momentum*h + rate*g; w -= (1+momentum)*h - momentum*h_prev (momentum {momentum:g})",
    "AdaGrad": "h += g^2; w -= rate*g / (sqrt(h) + delta) (delta {delta:g})",
    "RMSProp": "h = rms_decay*h + (1-rms_decay)*g^2; w -= rate*g / (sqrt(h) + delta) (rms_decay {rms_decay:g})",
    "AdaDelta": "u = g*sqrt((h2+delta)/(h+delta)) with decay {momentum:g}; w -= rate*u (delta {delta:g})",
    "Adam": "beta1 {momentum:g}, beta2 {momentum2:g}; w -= rate*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta)",
}
_POLICIES = {
    "fixed": "base_lr {base_lr:g}",
    "step": "base_lr {base_lr:g} * gamma {gamma:g} ^ floor(iter / {stepsize})",
    "exp": "base_lr {base_lr:g} * gamma {gamma:g} ^ iter",
    "inv": "base_lr {base_lr:g} * (1 + gamma {gamma:g} * iter) ^ -{power:g}",
    "multistep": "base_lr {base_lr:g} * gamma {gamma:g} ^ (stepvalues reached of {stepvalue})",
    "poly": "base_lr {base_lr:g} * (1 - iter / {max_iter}) ^ {power:g}",
    "sigmoid": "base_lr {base_lr:g} / (1 + exp(-gamma {gamma:g} * (iter - {stepsize})))",
}
