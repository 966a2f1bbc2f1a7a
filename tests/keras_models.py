"""Keras fixtures for the tests: seeded models saved as ``.keras`` and ``.h5``, and the
reference outputs Keras itself computes. Importing this module needs Keras (the tests
skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

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


def write_keras2_h5(path: Path, seed: int = 0) -> Path:
    """A legacy ``.h5`` file as TensorFlow's Keras 2 wrote them (a config in Keras 2's
    form: ``batch_input_shape``, nested-list inbound nodes; weights named
    ``conv/kernel:0``, ``dw/depthwise_kernel:0``), written with h5py: this environment has
    no TensorFlow. Keras 3 still loads such files, which makes it the reference."""
    import json

    import h5py

    rng = np.random.default_rng(seed)

    from untrusted_files import keras_layer as layer

    def node(*names: str) -> list:
        return [[[n, 0, 0, {}] for n in names]]

    conv = {"strides": [1, 1], "data_format": "channels_last", "dilation_rate": [1, 1], "use_bias": True}
    layers = [
        layer("InputLayer", "input_1", {"batch_input_shape": [None, 5, 4, 3], "sparse": False, "ragged": False}, []),
        layer(
            "Conv2D",
            "conv",
            conv
            | {
                "filters": 4,
                "kernel_size": [3, 3],
                "strides": [2, 2],
                "padding": "same",
                "groups": 1,
                "activation": "relu",
            },
            node("input_1"),
        ),
        layer(
            "DepthwiseConv2D",
            "dw",
            conv
            | {
                "kernel_size": [3, 3],
                "padding": "same",
                "depth_multiplier": 1,
                "activation": "linear",
                "use_bias": False,
            },
            node("conv"),
        ),
        layer(
            "BatchNormalization",
            "bn",
            {"axis": [3], "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True},
            node("dw"),
        ),
        layer("Add", "add", {}, node("bn", "conv")),
        layer("Flatten", "flatten", {"data_format": "channels_last"}, node("add")),
        layer("Dense", "dense", {"units": 3, "activation": "softmax", "use_bias": True}, node("flatten")),
    ]
    config = {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": layers,
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["dense", 0, 0]],
        },
    }
    weights = {
        "conv": [("kernel:0", (3, 3, 3, 4)), ("bias:0", (4,))],
        "dw": [("depthwise_kernel:0", (3, 3, 4, 1))],
        "bn": [("gamma:0", (4,)), ("beta:0", (4,)), ("moving_mean:0", (4,)), ("moving_variance:0", (4,))],
        "dense": [("kernel:0", (24, 3)), ("bias:0", (3,))],
    }
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"], handle.attrs["backend"] = "2.12.0", "tensorflow"
        handle.attrs["model_config"] = json.dumps(config)
        group = handle.create_group("model_weights")
        names = [entry["name"] for entry in layers]
        group.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            entries = weights.get(name, [])
            layer_group = group.create_group(name)
            layer_group.attrs["weight_names"] = [f"{name}/{v}".encode() for v, _ in entries]
            for variable, shape in entries:
                values = rng.uniform(0.5, 1.5, shape) if "variance" in variable else rng.normal(0, 0.5, shape)
                layer_group.create_dataset(f"{name}/{variable}", data=values.astype("float32"))
    return path
