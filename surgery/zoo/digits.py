"""A small CNN for 8x8 digit images (scikit-learn's digits), shipped pretrained.

The weights in ``digits_cnn.pt`` were trained by ``examples/train_digits.py``; its
accuracy, data split and checksum are recorded in ``digits_cnn.json``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from surgery.lazy_torch import nn, torch

WEIGHTS = Path(__file__).resolve().parent / "digits_cnn.pt"


class DigitsCNN(nn.Module):
    """Input (N, 1, 8, 8) in [0, 1] (the digits' 0..16 values divided by 16); output
    (N, 10) logits. Module paths (``features.conv1``, ``classifier.fc2``) are the layer
    names a spec uses."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 16, 3, padding=1),
                bn1=nn.BatchNorm2d(16),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(16, 32, 3, padding=1),
                bn2=nn.BatchNorm2d(32),
                relu2=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv3=nn.Conv2d(32, 64, 3, padding=1),
                relu3=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(256, 64),
                relu=nn.ReLU(),
                drop=nn.Dropout(0.25),
                fc2=nn.Linear(64, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def digits_cnn(pretrained: bool = True) -> DigitsCNN:
    """The digits CNN, with its trained weights by default, in eval mode.

    Example:
        >>> model = digits_cnn()
        >>> model(torch.zeros(1, 1, 8, 8)).shape
        torch.Size([1, 10])
    """
    model = DigitsCNN()
    if pretrained:
        if not WEIGHTS.exists():
            raise FileNotFoundError(f"{WEIGHTS} is missing: run `python examples/train_digits.py` to make it")
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
