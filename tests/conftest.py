"""Shared fixtures: tiny models and spec files written into tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from toy_nets import toy_cnn  # noqa: E402


@pytest.fixture
def toy_weights(tmp_path: Path) -> Path:
    """A state_dict of ToyCNN saved to disk, next to which specs are written."""
    path = tmp_path / "toy.pt"
    torch.save(toy_cnn().state_dict(), path)
    return path


@pytest.fixture
def toy_spec(tmp_path: Path, toy_weights: Path):
    """Write a spec whose source is the saved ToyCNN; returns a function(edits_text) -> path."""

    def write(edits: str, name: str = "spec.prototxt", seed: int = 3) -> Path:
        path = tmp_path / name
        path.write_text(
            f'source {{ torch {{ factory: "{TESTS / "toy_nets.py"}:ToyCNN" weights: "{toy_weights.name}" }}\n'
            f"         input_shape: [2, 3, 16, 16] }}\nseed: {seed}\n{edits}\n"
        )
        return path

    return write
