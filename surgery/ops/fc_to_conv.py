"""``fc_to_conv``: InnerProduct into the equivalent Convolution (Caffe's net_surgery):
an IP over a C x H x W input is an H x W convolution with the same weights, reshaped."""

from __future__ import annotations

import functools
from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net, Origin, ParamBlob
from surgery.layers.convolution import conv_params
from surgery.lazy_torch import torch
from surgery.ops.base import DERIVED, Action, OpContext, register_op
from surgery.ops.selectors import match_name


@register_op("fc_to_conv")
def fc_to_conv(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Turn each named InnerProduct into a Convolution. Its input must be 4-D (N, C, H, W),
    flattened inside the IP: the first fully connected layer after the last pooling.
    Later IPs are converted by naming them too (they then read (N, C, 1, 1))."""
    if not op.layer:
        raise SpecError("fc_to_conv names no layer", fix='add layer: "fc6"')
    actions = []
    for name in [n for pattern in op.layer for n in match_name(net, pattern)]:
        layer = net.layer(name)
        if layer.type != "InnerProduct":
            raise SpecError(f"{name!r} is a {layer.type}, not an InnerProduct", subject=name)
        shape = net.known_shape(layer.inputs[0])
        if len(shape) != 4 or layer.params.get("axis", 1) % 4 != 1:
            raise SpecError(
                f"{name!r} reads a {len(shape)}-D input {shape}; fc_to_conv needs an (N, C, H, W) "
                "input flattened from axis 1",
                subject=name,
                fix="convert the first fully connected layer, after the last pooling",
            )
        _, channels, height, width = shape
        weight = layer.blobs["weight"]
        kernel = (weight.shape[0], channels, height, width)
        layer.type = "Convolution"
        layer.params = conv_params(layer.params["num_output"], (height, width), bias_term=layer.params["bias_term"])
        weight.derive(
            functools.partial(_reshaped, weight.snapshot(), kernel),
            Origin("derived", f"{name}'s InnerProduct weight reshaped to a {height}x{width} kernel"),
            shape=kernel,
        )
        actions.append(Action("fc_to_conv", name, DERIVED, f"InnerProduct -> Convolution {height}x{width}"))
        net.invalidate()
    # A later InnerProduct that applied to the last axis now reads (N, C, h, w): flatten it
    # from axis 1 as Caffe does (the same values where h = w = 1).
    for later in net.layers():
        if (
            later.type == "InnerProduct"
            and later.params.get("axis") == -1
            and len(net.known_shape(later.inputs[0])) == 4
        ):
            later.params["axis"] = 1
            net.invalidate()
    return actions


def _reshaped(weight: ParamBlob, shape: tuple[int, ...]) -> torch.Tensor:
    return weight.data.reshape(shape)
