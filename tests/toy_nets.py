"""Tiny torch models the core tests trace, edit and emit (no downloads)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class ToyCNN(nn.Module):
    """VGG-style names (block1_conv1 ... block2_pool) and a 2-layer classifier."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                block1_conv1=nn.Conv2d(3, 8, 3, padding=1),
                block1_bn=nn.BatchNorm2d(8),
                block1_relu=nn.ReLU(),
                block1_pool=nn.MaxPool2d(2),
                block2_conv1=nn.Conv2d(8, 16, 3, padding=1),
                block2_relu=nn.ReLU(),
                block2_pool=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(16 * 4 * 4, 32),
                relu=nn.ReLU(),
                drop=nn.Dropout(0.5),
                fc2=nn.Linear(32, classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ThreeHeads(nn.Module):
    """GoogLeNet's layout in miniature: two auxiliary heads that exist only in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.aux1 = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(), fc=nn.Linear(32, 16), classifier=nn.Linear(16, 10)
            )
        )
        self.aux2 = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(), fc=nn.Linear(32, 16), classifier=nn.Linear(16, 10)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor):
        a = F.relu(self.stem(x))
        b = F.relu(self.mid(a))
        main = self.classifier(torch.flatten(self.pool(b), 1))
        if self.training:
            return main, self.aux1(a), self.aux2(b)
        return main


class ConvTail(nn.Module):
    """A conv and a pooling: the trunk an fc_to_conv test stacks fully connected layers on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def toy_cnn(classes: int = 5) -> ToyCNN:
    torch.manual_seed(0)
    model = ToyCNN(classes)
    with torch.no_grad():  # realistic, non-trivial BatchNorm statistics
        bn = model.features.block1_bn
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def three_heads() -> ThreeHeads:
    torch.manual_seed(1)
    return ThreeHeads()
