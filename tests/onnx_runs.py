"""What the multi-input parity tests share: random inputs at a batch size, and one run
of an ONNX file in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from surgery.verify import onnx_session


def random_inputs(shapes, batch: int) -> list[torch.Tensor]:
    """One standard-normal tensor per shape, with its batch axis set to ``batch``."""
    return [torch.randn(batch, *shape[1:]) for shape in shapes]


def run_onnx(path: Path, xs: list[torch.Tensor]) -> np.ndarray:
    """The file's first output for inputs ``xs``, given in the order of its inputs."""
    session = onnx_session(path)
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs)})[0]
