"""Shared fixtures: tiny models and spec files written into tmp_path."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

# References computed by other frameworks run on the CPU at full fp32, so a machine with
# a GPU compares the same numbers as CI: Keras's torch backend would otherwise put its
# models on the GPU, where torch runs float32 convolutions in TF32 by default.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_TORCH_DEVICE", "cpu")
# Most tests' specs name factories in tests/*.py from a tmp_path spec: code the suite
# trusts. tests/test_trust_code.py takes this away to check the refusal.
os.environ["SURGERY_TRUST_CODE"] = "1"

import numpy as np
import pytest
import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from toy_nets import toy_cnn  # noqa: E402


@pytest.fixture(autouse=True)
def _same_random_state() -> None:
    """Every test starts from one random state: inputs drawn without a seed
    (``torch.randn``, ``np.random``, ``random``) are the same numbers on every run, so a
    comparison near its tolerance passes or fails every time, never now and then."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


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
