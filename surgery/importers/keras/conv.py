"""Keras convolutions, padding and pooling as IR layers (channels-last to NCHW)."""

from __future__ import annotations

from typing import Any

from surgery.importers.keras import activations
from surgery.importers.keras.builder import Builder, Call, Tensor, keras_layer
from surgery.importers.keras.layout import conv_kernel, depthwise_kernel, padding_of
from surgery.layers.convolution import conv_params
from surgery.layers.pooling import pool_output_size, pooling_params


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return values * 2 if len(values) == 1 else values  # type: ignore[return-value]


def image_input(call: Call, x: Tensor) -> None:
    """Refuse what the 2-D layers cannot read: channels_first data, non-image tensors."""
    if call.get("data_format", "channels_last") != "channels_last":
        raise call.refuse("data_format channels_first has no mapping", fix="save the model channels_last")
    if x.rank != 4 or x.channel_at != 1:
        raise call.refuse(f"expects an (N, H, W, C) image tensor, got shape {list(x.shape)}")


def _padded(b: Builder, call: Call, x: Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> tuple[str, list[int]]:
    """The convolution's input blob and its symmetric padding; TensorFlow's asymmetric
    'same' padding (more at the end, at stride 2) becomes an explicit Pad layer."""
    mode = call.get("padding", "valid")
    if mode not in ("valid", "same"):
        raise call.refuse(f"padding {mode!r} has no mapping")
    begin, end = padding_of(mode, x.shape[1:3], kernel, stride, dilation)
    if begin == end:
        return x.blob, begin
    pads = [0, 0, *begin, 0, 0, *end]
    return b.add(f"{call.name}/pad", "Pad", [x.blob], {"pads": pads, "value": 0.0}), [0, 0]


def _out(b: Builder, blob: str) -> Tensor:
    n, c, h, w = b.shape(blob)
    return b.tensor(blob, (n, h, w, c), 1)


@keras_layer("Conv2D")
def conv2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    image_input(call, x)
    kernel, stride = _pair(call.get("kernel_size")), _pair(call.get("strides", 1))
    dilation, groups = _pair(call.get("dilation_rate", 1)), int(call.get("groups", 1))
    filters, bias = int(call.get("filters")), bool(call.get("use_bias", True))
    channels = x.shape[-1]
    source, pad = _padded(b, call, x, kernel, stride, dilation)
    blobs = {
        "weight": b.param(
            b.variable(call, 0, "kernel", (*kernel, channels // groups, filters)),
            conv_kernel,
            (filters, channels // groups, *kernel),
        )
    }
    if bias:
        blobs["bias"] = b.param(b.variable(call, 1, "bias", (filters,)))
    params = conv_params(filters, kernel, stride, tuple(pad), dilation, groups, bias)
    out = b.add(call.name, "Convolution", [source], params, blobs)
    return activations.fused(b, call, _out(b, out))


def _depthwise(
    b: Builder, call: Call, x: Tensor, name: str, variable: Any, multiplier: int, bias: dict[str, Any]
) -> str:
    kernel, stride = _pair(call.get("kernel_size")), _pair(call.get("strides", 1))
    dilation = _pair(call.get("dilation_rate", 1))
    channels = x.shape[-1]
    source, pad = _padded(b, call, x, kernel, stride, dilation)
    blobs = {"weight": b.param(variable, depthwise_kernel, (channels * multiplier, 1, *kernel))} | bias
    params = conv_params(channels * multiplier, kernel, stride, tuple(pad), dilation, channels, bool(bias))
    return b.add(name, "Convolution", [source], params, blobs)


@keras_layer("DepthwiseConv2D")
def depthwise_conv2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    image_input(call, x)
    kernel, multiplier, channels = _pair(call.get("kernel_size")), int(call.get("depth_multiplier", 1)), x.shape[-1]
    variable = b.variable(call, 0, "depthwise_kernel", (*kernel, channels, multiplier))
    bias = {}
    if call.get("use_bias", True):
        bias = {"bias": b.param(b.variable(call, 1, "bias", (channels * multiplier,)))}
    out = _depthwise(b, call, x, call.name, variable, multiplier, bias)
    return activations.fused(b, call, _out(b, out))


@keras_layer("SeparableConv2D")
def separable_conv2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """A depthwise convolution ``<name>/depthwise``, then the pointwise one ``<name>``
    (which holds the bias), so that a cut at the Keras name keeps both."""
    x = inputs[0]
    image_input(call, x)
    kernel, multiplier, channels = _pair(call.get("kernel_size")), int(call.get("depth_multiplier", 1)), x.shape[-1]
    filters, use_bias = int(call.get("filters")), bool(call.get("use_bias", True))
    variable = b.variable(call, 0, "depthwise_kernel", (*kernel, channels, multiplier))
    middle = _depthwise(b, call, x, f"{call.name}/depthwise", variable, multiplier, {})
    pointwise = b.variable(call, 1, "pointwise_kernel", (1, 1, channels * multiplier, filters))
    blobs = {"weight": b.param(pointwise, conv_kernel, (filters, channels * multiplier, 1, 1))}
    if use_bias:
        blobs["bias"] = b.param(b.variable(call, 2, "bias", (filters,)))
    out = b.add(call.name, "Convolution", [middle], conv_params(filters, 1, bias_term=use_bias), blobs)
    return activations.fused(b, call, _out(b, out))


@keras_layer("ZeroPadding2D")
def zero_padding2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    x = inputs[0]
    image_input(call, x)
    padding = call.get("padding", 1)
    if isinstance(padding, int):
        (top, bottom), (left, right) = (padding, padding), (padding, padding)
    else:
        rows, cols = padding
        (top, bottom), (left, right) = _pair(rows), _pair(cols)
    out = b.add(call.name, "Pad", [x.blob], {"pads": [0, 0, top, left, 0, 0, bottom, right], "value": 0.0})
    return _out(b, out)


@keras_layer("MaxPooling2D", "AveragePooling2D")
def pooling2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """'same' pooling ignores the padding (max over, or average of, the cells inside);
    the extra cell TensorFlow pads at the end is torch's ceil-mode last window."""
    x = inputs[0]
    image_input(call, x)
    kernel = _pair(call.get("pool_size", 2))
    stride = _pair(call.get("strides") or kernel)
    mode = call.get("padding", "valid")
    if mode not in ("valid", "same"):
        raise call.refuse(f"padding {mode!r} has no mapping")
    begin, end = padding_of(mode, x.shape[1:3], kernel, stride, (1, 1))
    ceil = begin != end
    wanted = [-(-n // s) if mode == "same" else (n - k) // s + 1 for n, k, s in zip(x.shape[1:3], kernel, stride)]
    got = [pool_output_size(n, k, s, p, 1, ceil) for n, k, s, p in zip(x.shape[1:3], kernel, stride, begin)]
    if got != wanted or any(2 * p > k for p, k in zip(begin, kernel)):
        raise call.refuse(
            f"'same' pooling of a {list(x.shape[1:3])} map with window {list(kernel)} and stride "
            f"{list(stride)} has no torch form"
        )
    pool = "MAX" if call.class_name.startswith("Max") else "AVE"
    params = pooling_params(pool, kernel, stride, begin, ceil_mode=ceil, count_include_pad=False)
    return _out(b, b.add(call.name, "Pooling", [x.blob], params))


@keras_layer("GlobalAveragePooling2D", "GlobalMaxPooling2D")
def global_pooling2d(b: Builder, call: Call, inputs: list[Tensor]) -> Tensor:
    """Without keepdims, a Flatten named after the Keras layer follows ``<name>/pool``."""
    x = inputs[0]
    image_input(call, x)
    pool = "MAX" if "Max" in call.class_name else "AVE"
    params = pooling_params(pool, 1, global_pooling=True)
    if call.get("keepdims", False):
        return _out(b, b.add(call.name, "Pooling", [x.blob], params))
    pooled = b.add(f"{call.name}/pool", "Pooling", [x.blob], params)
    out = b.add(call.name, "Flatten", [pooled], {"axis": 1, "end_axis": -1})
    return b.tensor(out, (x.shape[0], x.shape[-1]))
