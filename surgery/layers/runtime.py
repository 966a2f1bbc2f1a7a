# The runtime of an emitted PyTorch model. Its source text is copied verbatim into every
# generated `model.py`, so a saved model loads in a fresh Python with only torch
# installed: this file must import nothing but torch and the standard library.
"""Base class and helper modules of emitted PyTorch models."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics stay fixed while the model trains (Caffe's
    ``use_global_stats: true``): it always normalises with the running statistics
    and never updates them. Its affine parameters, if trainable, still learn."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class FrozenBatchNorm1d(nn.BatchNorm1d):
    """The 1-D (N, C) / (N, C, L) form of :class:`FrozenBatchNorm2d`."""

    forward = FrozenBatchNorm2d.forward


class FrozenBatchNorm3d(nn.BatchNorm3d):
    """The (N, C, T, H, W) form of :class:`FrozenBatchNorm2d` (video backbones)."""

    forward = FrozenBatchNorm2d.forward


class SurgeryModule(nn.Module):
    """Base class of emitted models.

    Class attributes set by the generated subclass:
        LR_MULTS: parameter name -> (lr_mult, decay_mult); lr_mult 0 = frozen.
        OUTPUTS: output names per mode ({"train": [...], "eval": [...]}); a mode with
            several outputs returns a dict keyed by these names.
        MODULE_PATHS: layer name -> attribute path, for the layers not at their own name.
        LOSS_WEIGHTS: train output -> its loss weight (Caffe's ``loss_weight``; GoogLeNet's
            auxiliary heads 0.3); an output not listed weighs 1.
        SOLVER: the spec's Caffe solver (see ``caffe_solver()``), or None.
        PREPROCESSING: how a decoded image becomes the input (surgery.preprocess: resize,
            crop, channel_order, then (pixel - mean) / std * scale), or empty.
    """

    LR_MULTS: ClassVar[dict[str, tuple[float, float]]] = {}
    OUTPUTS: ClassVar[dict[str, list[str]]] = {}
    MODULE_PATHS: ClassVar[dict[str, str]] = {}
    LOSS_WEIGHTS: ClassVar[dict[str, float]] = {}
    SOLVER: ClassVar[dict | None] = None
    PREPROCESSING: ClassVar[dict] = {}

    def weighted_loss(self, outputs: torch.Tensor | dict[str, torch.Tensor], criterion, *targets) -> torch.Tensor:
        """The total loss as Caffe's net sums it: each train output's
        ``criterion(output, *targets)`` times its LOSS_WEIGHTS entry (1 when absent).

        Example:
            >>> loss = model.weighted_loss(model(images), F.cross_entropy, labels)  # 0.3, 0.3, 1
        """
        if isinstance(outputs, torch.Tensor):
            name = self.OUTPUTS.get("train", [""])[0]
            return criterion(outputs, *targets) * self.LOSS_WEIGHTS.get(name, 1.0)
        terms = [criterion(value, *targets) * self.LOSS_WEIGHTS.get(name, 1.0) for name, value in outputs.items()]
        return torch.stack(terms).sum()

    def layer_module(self, name: str) -> nn.Module:
        """The module of layer ``name``. Layers whose names are not plain attribute paths
        (quotes, spaces, keywords, empty parts) sit at the path MODULE_PATHS gives."""
        return self.get_submodule(self.MODULE_PATHS.get(name, name))

    def _add_layer(self, path: str, module: nn.Module) -> None:
        """Register ``module`` under a dotted path, creating plain containers between."""
        *parents, leaf = path.split(".")
        owner: nn.Module = self
        for part in parents:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner.get_submodule(part)
        owner.add_module(leaf, module)

    def apply_lr_mults(self) -> None:
        """Set ``requires_grad`` from LR_MULTS: lr_mult 0 freezes a parameter."""
        for name, param in self.named_parameters():
            lr_mult, _ = self.LR_MULTS.get(name, (1.0, 1.0))
            param.requires_grad_(lr_mult != 0)

    def merge_adapters(self) -> nn.Module:
        """Fold every low-rank adapter into its layer, in place: each LoRA layer becomes
        the plain ``nn.Linear`` / ``nn.Conv*d`` it adapts, with ``W + scale * B A`` as its
        weight (what the deploy ONNX holds). Returns the model, now dense.

        Example:
            >>> dense = model.merge_adapters()  # then torch.onnx.export(dense, ...)
        """
        for path, module in list(self.named_modules()):
            if isinstance(module, _LORA_TYPES):
                owner, _, leaf = path.rpartition(".")
                self.get_submodule(owner).add_module(leaf, module.merged())
        return self

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict]:
        """torch.optim parameter groups honouring each parameter's lr_mult / decay_mult.

        Frozen parameters (lr_mult 0) are left out. Each group has ``params``, ``lr``
        = lr * lr_mult, ``weight_decay`` = weight_decay * decay_mult, ``lr_mult``,
        ``decay_mult`` and ``names``.

        Example:
            >>> optimizer = torch.optim.SGD(model.param_groups(lr=0.01, weight_decay=5e-4), momentum=0.9)
        """
        groups: dict[tuple[float, float], dict] = {}
        for name, param in self.named_parameters():
            lr_mult, decay_mult = self.LR_MULTS.get(name, (1.0, 1.0))
            if lr_mult == 0 or not param.requires_grad:
                continue
            group = groups.setdefault(
                (lr_mult, decay_mult),
                {
                    "params": [],
                    "names": [],
                    "lr": lr * lr_mult,
                    "weight_decay": weight_decay * decay_mult,
                    "lr_mult": lr_mult,
                    "decay_mult": decay_mult,
                },
            )
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())


class ConstantTensor(nn.Module):
    """Holds one tensor the model reads directly (a traced ``get_attr``)."""

    def __init__(self, shape: tuple[int, ...], trainable: bool) -> None:
        super().__init__()
        value = torch.empty(shape)
        if trainable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value


class ChannelAffine(nn.Module):
    """Caffe's Scale / Bias layers: ``y = x * weight + bias`` with the parameters
    broadcast over the axes after ``axis + ndim(weight)``."""

    def __init__(self, shape: tuple[int, ...], axis: int, scale: bool, bias: bool) -> None:
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.empty(shape)) if scale else None
        self.bias = nn.Parameter(torch.empty(shape)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        param = self.weight if self.weight is not None else self.bias
        assert param is not None  # the constructor keeps a weight, a bias or both
        view = (1,) * self.axis + tuple(param.shape) + (1,) * (x.dim() - self.axis - param.dim())
        if self.weight is not None:
            x = x * self.weight.reshape(view)
        if self.bias is not None:
            x = x + self.bias.reshape(view)
        return x


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with norm_region WITHIN_CHANNEL:
    ``y = x * (1 + alpha / size^2 * sum of x^2 over a size x size window)^-beta``
    (Caffe ignores k in this mode)."""

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, count_include_pad=True)
        return x * (1 + self.alpha * mean) ** -self.beta


class StochasticDepth(nn.Module):
    """Stochastic depth while training: whole rows (or the whole batch) of a residual
    branch are zeroed with probability ``p`` and the survivors scaled by ``1 / (1 - p)``;
    the identity in eval. Draws its noise as torchvision's ``stochastic_depth`` does, so a
    seeded training run gives the same masks."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise


def _add_adapter(
    module: Any, weight: torch.Tensor, rank: int, a_shape: tuple[int, ...], b_tail: tuple[int, ...],
    scale: float, dropout: float,
) -> None:  # fmt: skip
    """``lora_A`` (rank, *a_shape), ``lora_B`` (out, rank, *b_tail), ``scale`` and the
    input dropout on a LoRA layer (PEFT's names and layouts)."""
    module.lora_A = nn.Parameter(torch.zeros((rank, *a_shape), device=weight.device, dtype=weight.dtype))
    module.lora_B = nn.Parameter(
        torch.zeros((weight.shape[0], rank, *b_tail), device=weight.device, dtype=weight.dtype)
    )
    module.scale = scale
    module.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()


def _delta_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * B A`` in the weight's shape."""
    rank = lora_a.shape[0]
    return ((lora_b.reshape(lora_b.shape[0], rank) @ lora_a.reshape(rank, -1)) * scale).reshape(weight.shape)


class LoRALinear(nn.Linear):
    """``nn.Linear`` with a low-rank adapter (PEFT's LoRA):
    ``F.linear(x, W, b) + scale * B(A(dropout(x)))``."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scale: float
    lora_dropout: nn.Module

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int, scale: float,
                 dropout: float = 0.0, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _add_adapter(self, self.weight, rank, (in_features,), (), scale, dropout)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        adapted = F.linear(F.linear(self.lora_dropout(input), self.lora_A), self.lora_B)
        return F.linear(input, self.weight, self.bias) + adapted * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain ``nn.Linear`` with ``W + scale * B A`` as its weight."""
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device,
                          dtype=self.weight.dtype)  # fmt: skip
        dense.weight.copy_(self.weight + _delta_weight(self.weight, self.lora_A, self.lora_B, self.scale))
        if self.bias is not None and dense.bias is not None:
            dense.bias.copy_(self.bias)
        return dense


_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_adapter(conv: Any, rank: int, scale: float, dropout: float) -> None:
    """A as a convolution with the layer's kernel, stride, padding and dilation; B a 1x1
    one (PEFT's Conv LoRA)."""
    kernel = tuple(conv.kernel_size)
    _add_adapter(conv, conv.weight, rank, (conv.in_channels, *kernel), (1,) * len(kernel), scale, dropout)


def _conv_forward(conv: Any, input: torch.Tensor) -> torch.Tensor:
    function = _CONV_FUNCTIONS[len(conv.kernel_size)]
    base = conv._conv_forward(input, conv.weight, conv.bias)
    hidden = function(conv.lora_dropout(input), conv.lora_A, None, conv.stride, conv.padding, conv.dilation)
    return base + function(hidden, conv.lora_B) * conv.scale


@torch.no_grad()
def _merged_conv(conv: Any, cls: Any) -> nn.Module:
    dense = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                bias=conv.bias is not None, padding_mode=conv.padding_mode, device=conv.weight.device,
                dtype=conv.weight.dtype)  # fmt: skip
    dense.weight.copy_(conv.weight + _delta_weight(conv.weight, conv.lora_A, conv.lora_B, conv.scale))
    if conv.bias is not None:
        dense.bias.copy_(conv.bias)
    return dense


class _LoRAConv(nn.Module):
    """What the LoRA convolutions share (PEFT's Conv LoRA; see :func:`_conv_adapter`)."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scale: float
    lora_dropout: nn.Module
    _dense: ClassVar[type[nn.Module]]

    def __init__(self, *args, rank: int, scale: float, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the nn.Conv*d this class is mixed into
        _conv_adapter(self, rank, scale, dropout)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _conv_forward(self, input)

    def merged(self) -> nn.Module:
        """The plain convolution with ``W + scale * B A`` as its weight."""
        return _merged_conv(self, self._dense)


class LoRAConv1d(_LoRAConv, nn.Conv1d):
    """``nn.Conv1d`` with a low-rank adapter."""

    _dense = nn.Conv1d


class LoRAConv2d(_LoRAConv, nn.Conv2d):
    """``nn.Conv2d`` with a low-rank adapter."""

    _dense = nn.Conv2d


class LoRAConv3d(_LoRAConv, nn.Conv3d):
    """``nn.Conv3d`` with a low-rank adapter."""

    _dense = nn.Conv3d


_LORA_TYPES = (LoRALinear, LoRAConv1d, LoRAConv2d, LoRAConv3d)
