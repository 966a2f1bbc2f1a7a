"""The shipped pretrained model and the examples built on it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from surgery.zoo import DIGITS_WEIGHTS, DigitsCNN, digits_cnn

ROOT = Path(__file__).resolve().parent.parent


def test_digits_cnn_loads_pretrained_in_eval_mode() -> None:
    model = digits_cnn()
    assert not model.training
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (4, 10)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, DigitsCNN().eval()(x)), "pretrained weights differ from a fresh init"


def test_metadata_matches_the_weights_file() -> None:
    meta = json.loads(DIGITS_WEIGHTS.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(DIGITS_WEIGHTS.read_bytes()).hexdigest()
    assert meta["test_accuracy"] >= 0.97
    assert DIGITS_WEIGHTS.stat().st_size < 300 * 1024


@pytest.mark.slow
def test_pretrained_accuracy_and_parity_finetuning() -> None:
    """The shipped weights really classify digits, and the parity spec's model learns."""
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import finetune_parity
        from train_digits import accuracy, digits_tensors
    finally:
        sys.path.pop(0)
    _, _, x_test, y_test = digits_tensors()
    assert accuracy(digits_cnn(), x_test, y_test) >= 0.97
    assert finetune_parity.main(epochs=2) >= 0.9
