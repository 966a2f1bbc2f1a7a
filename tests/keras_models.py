"""Keras fixtures for the tests: seeded models saved as ``.keras`` and ``.h5``, and the
reference outputs Keras itself computes. Importing this module needs Keras (the tests
skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import keras  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Non-trivial seeded weights: Keras's seeded kernels, and random biases and
    statistics (a fresh BatchNorm would be the identity and hide a mistake)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        path, value = weight.path, np.asarray(weight.numpy())
        if value.dtype.kind != "f":
            continue
        if "variance" in path or "gamma" in path:
            weight.assign(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        elif any(key in path for key in ("bias", "beta", "mean")):
            weight.assign(rng.normal(0.0, 0.1, value.shape).astype(value.dtype))
        elif path.endswith("alpha"):
            weight.assign(rng.uniform(0.05, 0.3, value.shape).astype(value.dtype))
    return model


def save_both(model: keras.Model, folder: Path, name: str) -> dict[str, Path]:
    """The model saved as a ``.keras`` archive and as a legacy ``.h5`` file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for suffix in (".keras", ".h5"):
        paths[suffix] = folder / f"{name}{suffix}"
        model.save(paths[suffix])
    return paths


def inputs_for(model: keras.Model, batch: int = 2, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (batch, *tensor.shape[1:])).astype("float32") for tensor in model.inputs]


def ensure_vgg16_example() -> Path:
    """``examples/keras/vgg16.keras`` (the scenario spec's source), made when missing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_keras_vgg16", ROOT / "examples" / "make_keras_vgg16.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OUT if module.OUT.exists() else module.make()
