"""Pretrained models shipped with surgery (small enough for the repo, trained offline)."""

from surgery.zoo.digits import WEIGHTS as DIGITS_WEIGHTS
from surgery.zoo.digits import DigitsCNN, digits_cnn

__all__ = ["DIGITS_WEIGHTS", "DigitsCNN", "digits_cnn"]
