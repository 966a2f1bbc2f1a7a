# Caffe's learning-rate policies, in closed form. Its source text is copied verbatim into a
# generated `model.py` (before surgery/solver/runtime.py's) whose spec names a solver: this
# file must import nothing but the standard library. `surgery solver` and the spec checks
# read it without torch.
"""Caffe's solver types, learning-rate policies and ``GetLearningRate``, torch-free."""

from __future__ import annotations

import math
import struct

# --- copied into a generated model.py from here on ---

#: Caffe's solver types and the deprecated ``solver_type`` enum's names for them.
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _f32(value: float) -> float:
    """``value`` rounded to float32, as Caffe's ``Dtype = float`` holds it (past float32's
    range: infinity, as a float computation gives it)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _pow(base: float, exponent: float) -> float:
    """C's ``pow``, which Caffe calls: an overflow is infinity and a negative base to a
    fractional power is NaN (Python's ``math.pow`` raises for both)."""
    try:
        return math.pow(base, exponent)
    except OverflowError:
        odd = float(exponent).is_integer() and exponent % 2 == 1
        return -math.inf if base < 0 and odd else math.inf
    except ValueError:  # a negative base to a fractional power, or 0 to a negative one
        return math.inf if base == 0 else math.nan


def _exp(value: float) -> float:
    """C's ``exp``: infinity past the range."""
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def caffe_rate(settings: dict, iteration: int) -> float:
    """Caffe's ``GetLearningRate`` for the update at ``iteration`` (0 for the first)."""
    base, policy = settings["base_lr"], settings["lr_policy"]
    gamma, power = settings.get("gamma", 0.0), settings.get("power", 0.0)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * _pow(gamma, iteration // settings["stepsize"])
    elif policy == "exp":
        rate = base * _pow(gamma, iteration)
    elif policy == "inv":
        rate = base * _pow(_f32(1.0 + _f32(gamma * iteration)), -power)
    elif policy == "multistep":
        rate = base * _pow(gamma, _multistep(settings["stepvalue"], iteration))
    elif policy == "poly":
        rate = base * _pow(_f32(1.0 - _f32(_f32(iteration) / _f32(settings["max_iter"]))), power)
    elif policy == "sigmoid":
        rate = base * (1.0 / (1.0 + _exp(-gamma * _f32(_f32(iteration) - _f32(settings["stepsize"])))))
    else:
        raise ValueError(f"unknown lr_policy {policy!r}; Caffe knows {', '.join(LR_POLICIES)}")
    return _f32(rate)


def _multistep(stepvalues: list, iteration: int) -> int:
    """Caffe's ``current_step_`` at ``iteration``: it advances at most once per update,
    when ``iter >= stepvalue[current_step_]``, so step k is taken at update
    ``max(stepvalue[k], update of step k-1 + 1)`` (duplicates and unsorted lists too)."""
    taken, at = 0, -1
    for value in stepvalues:
        at = max(value, at + 1)
        if at > iteration:
            break
        taken += 1
    return taken
