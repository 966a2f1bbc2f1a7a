"""Keras activations (the ``activation`` argument of Conv2D/Dense, the Activation, ReLU,
LeakyReLU, Softmax layers) as IR layers."""

from __future__ import annotations

from typing import Any

from surgery.errors import ModelFormatError
from surgery.importers.keras.builder import Builder, Call, Tensor, has_type, keras_layer

#: activation name -> (IR layer type, params). Softmax's axis is filled in per tensor.
_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("ReLU", {"negative_slope": 0.0}),
    "relu6": ("Clip", {"min": 0.0, "max": 6.0}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("TanH", {}),
    "softmax": ("Softmax", {}),
    "hard_sigmoid": ("HardSigmoid", {}),  # Keras 3: relu6(x + 3) / 6, as torch's
    "hard_silu": ("HardSwish", {}),
    "hard_swish": ("HardSwish", {}),
    "swish": ("SiLU", {}),
    "silu": ("SiLU", {}),
    "gelu": ("GELU", {"approximate": "none"}),  # keras.activations.gelu defaults to the exact form
    "mish": ("Mish", {}),
}


def activation_name(value: Any) -> str | None:
    """The activation a config names (a string, or a serialized built-in function)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and str(value.get("module", "")).startswith("keras"):
        return value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    return None


def unmapped_activation(value: Any) -> str | None:
    """Why an activation cannot be mapped (None when it can)."""
    name = activation_name(value)
    if name is None:
        return f"custom activation {value!r}"
    if name == "linear":
        return None
    if name not in _ACTIVATIONS:
        return f"activation {name!r} has no mapping"
    if not has_type(_ACTIVATIONS[name][0]):
        return f"activation {name!r} needs layer type {_ACTIVATIONS[name][0]}, which this version lacks"
    return None


def apply(b: Builder, name: str, value: Any, x: Tensor) -> Tensor:
    """``x`` through the activation ``value`` (no layer for 'linear'), as layer ``name``."""
    act = activation_name(value)
    if act == "linear":
        return x
    if act is None or act not in _ACTIVATIONS:  # unsupported() refused these before any layer was built
        raise ModelFormatError(f"layer {name!r}: activation {value!r} has no mapping")
    type_name, params = _ACTIVATIONS[act]
    params = dict(params)
    if type_name == "Softmax":
        params["axis"] = x.axis(-1)
    return b.like(b.add(name, type_name, [x.blob], params), x)


def fused(b: Builder, call: Call, x: Tensor) -> Tensor:
    """A layer's own ``activation`` argument, as an IR layer ``<name>/<activation>``."""
    value = call.get("activation")
    act = activation_name(value)
    return x if act == "linear" else apply(b, f"{call.name}/{act}", value, x)


@keras_layer("Activation")
def activation_layer(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    return apply(b, call.name, call.get("activation"), inputs[0])


@keras_layer("Softmax")
def softmax_layer(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    axis = call.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise call.refuse("a softmax over several axes has no mapping")
        axis = axis[0]
    return b.like(b.add(call.name, "Softmax", [x.blob], {"axis": x.axis(axis)}), x)


@keras_layer("ReLU")
def relu_layer(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    slope, top, threshold = (float(call.get(k) or 0.0) for k in ("negative_slope", "max_value", "threshold"))
    if threshold:
        raise call.refuse(f"threshold {threshold} has no mapping")
    if call.get("max_value") is not None:
        if slope:
            raise call.refuse("a leaky ReLU with a max_value has no mapping")
        return b.like(b.add(call.name, "Clip", [x.blob], {"min": 0.0, "max": top}), x)
    return b.like(b.add(call.name, "ReLU", [x.blob], {"negative_slope": slope}), x)


@keras_layer("LeakyReLU")
def leaky_relu_layer(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    slope = call.get("negative_slope", call.get("alpha", 0.3))
    return b.like(b.add(call.name, "ReLU", [inputs[0].blob], {"negative_slope": float(slope)}), inputs[0])
