"""Tiny models for the hostile-input tests: two convolutions in a row (collapse), and
factories that fail in each way a user's code can."""

from __future__ import annotations

from torch import nn


class TwoConvs(nn.Module):
    """conv1 -> ReLU -> conv2 -> global pool -> fc: a pair ``collapse`` can fit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.conv2(self.relu(self.conv1(x))))))


def raises() -> nn.Module:
    raise RuntimeError("the factory refuses")


def not_a_module() -> dict:
    return {"conv": 1}


def chain(count: int = 10) -> nn.Module:
    """A conv and ``count`` ReLUs: a long net for the scaling test."""
    return nn.Sequential(nn.Conv2d(1, 2, 1), *[nn.ReLU() for _ in range(count)])
