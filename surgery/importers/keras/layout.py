"""Channels-last (Keras) to channels-first (the IR): pure shape and weight arithmetic.

Weight functions take and return torch tensors (torch's strided copies are several times
faster than numpy's for a large transpose). A Keras image tensor is ``(N, H, W, C)``; the
IR holds it as ``(N, C, H, W)``. A tensor
records where the IR put Keras's last axis (``channel_at``: 1 for images, 2 for clips
``(N, T, C, H, W)``; None when the IR holds the Keras order as is). Weights are
transposed here, once, at import; nothing is transposed at run time.
"""

from __future__ import annotations

import math

import numpy as np

from surgery.lazy_torch import torch


def ir_shape(shape: tuple[int, ...], channel_at: int | None) -> tuple[int, ...]:
    """The IR shape of a Keras shape."""
    if channel_at is None:
        return tuple(shape)
    return (*shape[:channel_at], shape[-1], *shape[channel_at:-1])


def ir_axis(axis: int, rank: int, channel_at: int | None) -> int:
    """The IR axis holding Keras axis ``axis`` of a rank-``rank`` tensor."""
    axis %= rank
    if channel_at is None or axis < channel_at:
        return axis
    return channel_at if axis == rank - 1 else axis + 1


def conv_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Keras ``(kh, kw, in, out)`` to torch ``(out, in, kh, kw)``."""
    return kernel.permute(3, 2, 0, 1)


def depthwise_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Keras depthwise ``(kh, kw, C, M)`` to a grouped torch kernel ``(C * M, 1, kh, kw)``:
    Keras orders the outputs channel-major (output ``c * M + m`` is multiplier m of c)."""
    kh, kw, channels, multiplier = kernel.shape
    return kernel.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)


def dense_kernel(kernel: torch.Tensor, flattened: tuple[int, ...] | None = None) -> torch.Tensor:
    """Keras ``(in, out)`` to torch ``(out, in)``. ``flattened``: the ``(H, W, C)`` map a
    Flatten made the input from; Keras read it in H, W, C order, the IR in C, H, W, so the
    columns are permuted to keep the same function."""
    if flattened is None:
        return kernel.t()
    order = np.arange(math.prod(flattened)).reshape(flattened)
    order = order.transpose(len(flattened) - 1, *range(len(flattened) - 1)).reshape(-1)
    return kernel[torch.from_numpy(order)].t()  # whole rows gathered, then one transpose


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis as (before, after): the output has
    ceil(size / stride) cells and the odd cell of padding goes at the end."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    return total // 2, total - total // 2


def padding_of(
    mode: str, sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial axis for Keras's ``valid`` / ``same``."""
    if mode == "valid":
        return [0] * len(sizes), [0] * len(sizes)
    pairs = [same_padding(n, k, s, d) for n, k, s, d in zip(sizes, kernel, stride, dilation)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ir_order(rank: int, channel_at: int | None) -> list[int]:
    """The IR tensor as a permutation of the Keras tensor: IR axis j is Keras axis
    ``order[j]`` (``[0, 3, 1, 2]`` for an image)."""
    if channel_at is None:
        return list(range(rank))
    return [*range(channel_at), rank - 1, *range(channel_at, rank - 1)]


def inverse(order: list[int]) -> list[int]:
    out = [0] * len(order)
    for index, axis in enumerate(order):
        out[axis] = index
    return out


def then(first: list[int], second: list[int]) -> list[int]:
    """The single permutation doing ``first`` then ``second`` (``t.permute(first).permute(second)``)."""
    return [first[axis] for axis in second]
