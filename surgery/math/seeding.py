"""Seeding the global generators for code that draws from them, without touching the
user's: a torch factory initialising its layers, a least-squares fit.

Inside :func:`seeded`, torch's (CPU and CUDA), numpy's legacy and Python's ``random``
generators start from the spec's seed; afterwards each is back where it was, so a
script calling surgery sees its own random stream continue as if surgery had not run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from surgery.lazy_torch import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with every global generator seeded from ``seed``; restore them after.

    Example:
        >>> with seeded(7):
        ...     model = torchvision.models.vgg16()   # the same weights on every run
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        torch.manual_seed(int(seed) % 2**64)
        random.seed(int(seed))
        np.random.seed(int(seed) % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
