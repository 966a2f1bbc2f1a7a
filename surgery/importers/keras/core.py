"""Keras core layers as IR layers: Dense, Flatten, Reshape, Dropout, BatchNormalization,
Rescaling, Normalization."""

from __future__ import annotations

import math

import numpy as np

from surgery.importers.keras import activations
from surgery.importers.keras.builder import Builder, Call, Tensor, keras_layer
from surgery.importers.keras.layout import dense_kernel, inverse, ir_order, ir_shape, then
from surgery.ir import ParamBlob
from surgery.layers.convolution import conv_params
from surgery.lazy_torch import torch


@keras_layer("Dense")
def dense(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """On a 2-D input an InnerProduct (its columns permuted when a Flatten of an image map
    feeds it); on the last axis of a sequence, an InnerProduct on axis -1; on an image
    tensor (Keras applies it to the channels), a 1x1 Convolution."""
    x = inputs[0]
    units, use_bias = int(call.get("units")), bool(call.get("use_bias", True))
    features = x.shape[-1]
    kernel = b.variable(call, 0, "kernel", (features, units))
    blobs = {}
    if x.channel_at is not None:
        if x.channel_at != 1 or x.rank != 4:
            raise call.refuse(f"a Dense on a tensor of shape {list(x.shape)} has no mapping")
        blobs["weight"] = b.param(kernel, lambda k: k.t().reshape(units, features, 1, 1), (units, features, 1, 1))
        type_name, params = "Convolution", conv_params(units, 1, bias_term=use_bias)
    else:
        flattened = x.flattened
        blobs["weight"] = b.param(kernel, lambda k: dense_kernel(k, flattened), (units, features))
        type_name, params = (
            "InnerProduct",
            {"num_output": units, "bias_term": use_bias, "axis": 1 if x.rank == 2 else -1},
        )
    if use_bias:
        blobs["bias"] = b.param(b.variable(call, 1, "bias", (units,)))
    out = b.add(call.name, type_name, [x.blob], params, blobs)
    shape = (*x.shape[:-1], units)
    return activations.fused(b, call, b.tensor(out, shape, x.channel_at))


@keras_layer("Flatten")
def flatten(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """The IR flattens in its own (C, H, W) order; the tensor remembers the map so that a
    Dense reading it permutes its weights to Keras's (H, W, C) order."""
    x = inputs[0]
    if x.rank == 2:
        return x
    out = b.add(call.name, "Flatten", [x.blob], {"axis": 1, "end_axis": -1})
    keras_order = tuple(x.shape[1:])
    moved = x.channel_at is not None and keras_order[-1] > 1 and math.prod(keras_order[:-1]) > 1
    return b.tensor(out, (x.shape[0], math.prod(keras_order)), flattened=keras_order if moved else x.flattened)


def same_order(shape: tuple[int, ...], channel_at: int | None, flattened: tuple[int, ...] | None) -> bool:
    """Whether the IR holds the tensor's values in Keras's memory order (only axes of
    size 1 moved), so that a reshape of it is a plain reshape."""
    if flattened is not None:
        return flattened[-1] == 1 or math.prod(flattened[:-1]) == 1
    if channel_at is None:
        return True
    return shape[-1] == 1 or math.prod(shape[channel_at:-1]) == 1


def keras_order(b: Builder, x: Tensor, name: str) -> Tensor:
    """``x`` with its values in Keras's order (a Permute back to channels-last; a Flatten of
    an image map unflattened, permuted and flattened again), for layers that depend on
    that order. ``x`` itself when the IR's order is already Keras's."""
    if same_order(x.shape, x.channel_at, x.flattened):
        return x if x.flattened is None else Tensor(x.blob, x.shape)
    if x.flattened is not None:
        # (N, F), or (N, T, F) from a TimeDistributed Flatten: each feature vector back to
        # its (C, H, W) map, the channels moved last, flattened again.
        height, width, channels = x.flattened
        lead = len(x.shape) - 1
        maps = b.add(
            f"{name}/unflatten", "Reshape", [x.blob], {"shape": [0, *[-1] * (lead - 1), channels, height, width]}
        )
        order = [*range(lead), lead + 1, lead + 2, lead]
        moved = b.add(f"{name}/channels_last", "Permute", [maps], {"order": order})
        flat = b.add(f"{name}/keras_order", "Flatten", [moved], {"axis": lead, "end_axis": -1})
        return b.tensor(flat, x.shape)
    order = inverse(ir_order(x.rank, x.channel_at))
    return b.tensor(b.add(f"{name}/channels_last", "Permute", [x.blob], {"order": order}), x.shape)


def from_keras_order(b: Builder, x: Tensor, name: str, shape: tuple[int, ...], last: str) -> Tensor:
    """A Keras-ordered blob laid out the IR's way (an image channels-first), the final
    layer called ``last``."""
    channel_at = 1 if len(shape) == 4 else None
    if same_order(shape, channel_at, None):
        target = [0, *ir_shape(shape, channel_at)[1:]]
        return b.tensor(b.add(last, "Reshape", [x.blob], {"shape": target}), shape, channel_at)
    plain = b.add(f"{name}/reshape", "Reshape", [x.blob], {"shape": [0, *shape[1:]]})
    return b.tensor(b.add(last, "Permute", [plain], {"order": ir_order(len(shape), channel_at)}), shape, channel_at)


@keras_layer("Reshape")
def reshape(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """A plain Reshape when only axes of size 1 move between the two layouts; else the
    values go to Keras's order and back around it (Permute layers)."""
    x = inputs[0]
    target = [int(d) for d in call.get("target_shape")]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(x.shape[1:]) // known
    shape = (x.shape[0], *target)
    return from_keras_order(b, keras_order(b, x, call.name), call.name, shape, call.name)


@keras_layer("Permute")
def permute(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """One IR Permute: from the IR's layout to Keras's, Keras's permutation, back."""
    x = inputs[0]
    x = keras_order(b, x, call.name) if x.flattened is not None else x
    keras = [0, *(int(d) for d in call.get("dims"))]
    shape = tuple(x.shape[axis] for axis in keras)
    channel_at = 1 if len(shape) == 4 else None
    order = then(then(inverse(ir_order(x.rank, x.channel_at)), keras), ir_order(len(shape), channel_at))
    return b.tensor(b.add(call.name, "Permute", [x.blob], {"order": order}), shape, channel_at)


@keras_layer("Dropout", "SpatialDropout2D", "GaussianDropout", "AlphaDropout", "GaussianNoise")
def dropout(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """The identity in inference; as a trainable layer, a Dropout of the same rate."""
    x = inputs[0]
    if call.class_name == "GaussianNoise":
        return x  # adds noise in training only; the IR has no noise layer
    rate = float(call.get("rate", 0.5))
    out = b.add(call.name, "Dropout", [x.blob], {"ratio": rate})
    return b.tensor(out, x.shape, x.channel_at, x.flattened)


def channel_axis(call: Call, x: Tensor) -> None:
    axis = call.get("axis", -1)
    if isinstance(axis, list):
        axis = axis[0] if len(axis) == 1 else None
    if axis is None or x.axis(axis) != 1:
        raise call.refuse(
            f"axis {call.get('axis')} of a {list(x.shape)} tensor is not the channel axis; "
            "only per-channel statistics have a mapping"
        )


@keras_layer("BatchNormalization")
def batch_normalization(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """Keras's epsilon and momentum (torch's momentum is 1 - Keras's)."""
    x = inputs[0]
    channel_axis(call, x)
    channels = x.shape[-1] if x.channel_at is not None or x.rank == 2 else x.shape[1]
    scale, center = bool(call.get("scale", True)), bool(call.get("center", True))
    index, blobs = 0, {}
    for role, keras_name, present in (("weight", "gamma", scale), ("bias", "beta", center)):
        if present:
            blobs[role] = b.param(b.variable(call, index, keras_name, (channels,)))
            index += 1
    if center and not scale:
        blobs = {"weight": ParamBlob.filled((channels,), 1.0, lr_mult=0.0)} | blobs
    if scale and not center:
        blobs["bias"] = ParamBlob.filled((channels,), 0.0, lr_mult=0.0)
    for role, keras_name in (("running_mean", "moving_mean"), ("running_var", "moving_variance")):
        blobs[role] = b.param(b.variable(call, index, keras_name, (channels,)), trainable=False)
        index += 1
    params = {
        "eps": float(call.get("epsilon", 1e-3)),
        "momentum": 1.0 - float(call.get("momentum", 0.99)),
        "affine": scale or center,
        "use_global_stats": None,
    }
    out = b.add(call.name, "BatchNorm", [x.blob], params, blobs)
    return b.tensor(out, x.shape, x.channel_at, x.flattened)


@keras_layer("Rescaling")
def rescaling(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    scale, offset = call.get("scale", 1.0), call.get("offset", 0.0)
    if not all(isinstance(v, (int, float)) for v in (scale, offset)):
        raise call.refuse("a per-channel scale or offset has no mapping yet")
    params = {"power": 1.0, "scale": float(scale), "shift": float(offset)}
    _note_input_scaling(b, call, x)
    return b.tensor(b.add(call.name, "Power", [x.blob], params), x.shape, x.channel_at, x.flattened)


@keras_layer("Normalization")
def normalization(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """``(x - mean) / max(sqrt(variance), 1e-7)`` per channel: a Scale holding
    ``1 / std`` and ``-mean / std`` (frozen, as Keras's statistics are)."""
    x = inputs[0]
    if call.get("invert", False):
        raise call.refuse("invert: true has no mapping")
    channel_axis(call, x)
    channels = x.shape[-1]
    _note_input_scaling(b, call, x)
    if call.get("mean") is not None:
        mean_of = _constant(call.get("mean"), channels, call)
        var_of = _constant(call.get("variance"), channels, call)
    else:
        mean_v, var_v = b.variable(call, 0, "mean"), b.variable(call, 1, "variance")
        for v in (mean_v, var_v):
            if math.prod(v.shape) != channels:
                raise call.refuse(f"statistics of shape {list(v.shape)} for {channels} channels")
        mean_of, var_of = (lambda: mean_v.read().reshape(-1)), (lambda: var_v.read().reshape(-1))

    def inverse_std() -> torch.Tensor:
        return torch.from_numpy((1.0 / np.maximum(np.sqrt(var_of()), 1e-7)).astype(np.float32))

    def shift() -> torch.Tensor:
        return torch.from_numpy((-mean_of() / np.maximum(np.sqrt(var_of()), 1e-7)).astype(np.float32))

    blobs = {
        "weight": ParamBlob.lazy((channels,), "float32", inverse_std, trainable=False),
        "bias": ParamBlob.lazy((channels,), "float32", shift, trainable=False),
    }
    out = b.add(call.name, "Scale", [x.blob], {"axis": 1, "num_axes": 1, "bias_term": True}, blobs)
    return b.tensor(out, x.shape, x.channel_at, x.flattened)


def _note_input_scaling(b: Builder, call: Call, x: Tensor) -> None:
    """A Rescaling / Normalization reading the model's input: the net takes pixels as
    decoded (0-255) and scales them itself, which is its preprocessing."""
    from surgery.preprocess import raw_pixels

    producer = b.net.producer(x.blob)
    if producer.type == "Permute" and producer.inputs:
        producer = b.net.producer(producer.inputs[0])
    if producer.type == "Input" and b.net.preprocess is None and len(x.shape) == 4:
        b.net.preprocess = raw_pixels(int(x.shape[-1]), f"keras {call.name!r} at the input scales pixels itself")


def _constant(value: object, channels: int, call: Call):
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise call.refuse(f"{array.size} statistics for {channels} channels")
    return lambda: array


@keras_layer("LayerNormalization")
def layer_normalization(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """Over the trailing axes of a tensor the IR holds in Keras's order (a sequence's or a
    vector's features); Keras's epsilon."""
    x = inputs[0]
    axes = call.get("axis", -1)
    axes = sorted(a % x.rank for a in (axes if isinstance(axes, list) else [axes]))
    if x.channel_at is not None or x.flattened is not None or axes != list(range(x.rank - len(axes), x.rank)):
        raise call.refuse(
            f"normalising axes {axes} of a {list(x.shape)} tensor has no mapping (only trailing "
            "axes of a tensor in Keras's order)"
        )
    if call.get("rms_scaling", False):
        raise call.refuse("rms_scaling has no mapping")
    normalized = tuple(x.shape[a] for a in axes)
    index, blobs = 0, {}
    for role, keras_name, present in (
        ("weight", "gamma", call.get("scale", True)),
        ("bias", "beta", call.get("center", True)),
    ):
        if present:
            blobs[role] = b.param(b.variable(call, index, keras_name, normalized))
            index += 1
    if "bias" in blobs and "weight" not in blobs:
        blobs = {"weight": ParamBlob.filled(tuple(normalized), 1.0, lr_mult=0.0)} | blobs
    params = {"normalized_shape": list(normalized), "eps": float(call.get("epsilon", 1e-3)), "affine": bool(blobs)}
    return b.tensor(b.add(call.name, "LayerNorm", [x.blob], params, blobs), x.shape)
