"""Folding a BatchNorm (and an affine scale/shift) into the layer before it.

``bn(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` is a convolution
with ``W' = W * s`` (per output channel) and ``b' = (b - mean) * s + beta``, where
``s = gamma / sqrt(var + eps)``. Pure tensor functions, computed in float64.
"""

from __future__ import annotations

from surgery.lazy_torch import torch


def fold_batchnorm(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded (weight, bias). ``weight``'s first axis is the output channel (Conv
    [O, C, kh, kw], InnerProduct [O, K])."""
    dtype = weight.dtype
    scale = (gamma.double() if gamma is not None else torch.ones_like(mean, dtype=torch.float64)) / torch.sqrt(
        var.double() + eps
    )
    shift = beta.double() if beta is not None else torch.zeros_like(scale)
    b = bias.double() if bias is not None else torch.zeros_like(scale)
    new_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (b - mean.double()) * scale + shift
    return new_weight.to(dtype), new_bias.to(dtype)
