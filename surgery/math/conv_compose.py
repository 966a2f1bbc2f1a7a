"""Two convolutions as one: exact composition, and a least-squares fit.

Pure tensor functions. Shapes follow torch / Caffe: weights [O, C/groups, kh, kw].
"""

from __future__ import annotations

from surgery.lazy_torch import F, torch


def composed_geometry(k1: int, s1: int, d1: int, p1: int, k2: int, s2: int, d2: int, p2: int) -> tuple[int, int, int]:
    """(kernel, stride, pad) of the single convolution equal to conv1 then conv2 (one axis)."""
    kernel = d1 * (k1 - 1) + s1 * d2 * (k2 - 1) + 1
    return kernel, s1 * s2, p1 + s1 * p2


def compose_weights(
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    stride1: tuple[int, int],
    dilation1: tuple[int, int],
    dilation2: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv2(conv1(x))`` as one convolution (groups 1, computed in float64).

    Output tap ``(s1*d2*i + d1*a)`` of the composite gathers ``w2[:, :, i] @ w1[:, :, a]``.
    """
    c2 = w2.shape[0]
    c0 = w1.shape[1]
    (k1h, k1w), (k2h, k2w) = w1.shape[2:], w2.shape[2:]
    kh = dilation1[0] * (k1h - 1) + stride1[0] * dilation2[0] * (k2h - 1) + 1
    kw = dilation1[1] * (k1w - 1) + stride1[1] * dilation2[1] * (k2w - 1) + 1
    weight = torch.zeros(c2, c0, kh, kw, dtype=torch.float64)
    a, b = w1.double(), w2.double()
    for i in range(k2h):
        for j in range(k2w):
            top, left = stride1[0] * dilation2[0] * i, stride1[1] * dilation2[1] * j
            rows = slice(top, top + dilation1[0] * (k1h - 1) + 1, dilation1[0])
            cols = slice(left, left + dilation1[1] * (k1w - 1) + 1, dilation1[1])
            weight[:, :, rows, cols] += torch.einsum("oc,cihw->oihw", b[:, :, i, j], a)
    bias = b2.double() if b2 is not None else torch.zeros(c2, dtype=torch.float64)
    if b1 is not None:
        bias = bias + torch.einsum("ochw,c->o", b, b1.double())
    return weight.to(w1.dtype), bias.to(w1.dtype)


def fit_conv(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    ridge: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution (weight, bias) whose output on ``inputs`` best matches ``targets``
    in least squares (a tiny ridge term keeps the normal equations well posed)."""
    patches = F.unfold(inputs.double(), kernel, padding=pad, stride=stride)  # [N, C*kh*kw, L]
    n, features, positions = patches.shape
    design = patches.permute(0, 2, 1).reshape(n * positions, features)
    design = torch.cat([design, torch.ones(n * positions, 1, dtype=torch.float64)], 1)
    target = targets.double().permute(0, 2, 3, 1).reshape(n * positions, -1)
    gram = design.T @ design
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64)
    solution = torch.linalg.solve(gram, design.T @ target)  # [features + 1, O]
    weight = solution[:-1].T.reshape(target.shape[1], inputs.shape[1], *kernel)
    return weight.to(inputs.dtype), solution[-1].to(inputs.dtype)


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    """||estimate - target|| / ||target||."""
    return float((estimate.double() - target.double()).norm() / target.double().norm().clamp_min(1e-30))
