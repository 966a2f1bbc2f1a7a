"""Hostile model files for the tests: each is what an attacker would hand a user, made
small here (h5py, onnx's helpers, zipfile). Nothing of them may reach the outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: What a "host file" holds: if these bytes show up in an output, the file was read.
SECRET = np.arange(12, dtype=np.float32) + 1000.0


def write_secret(path: Path) -> Path:
    path.write_bytes(SECRET.tobytes())
    return path


def keras_layer(cls: str, name: str, config: dict, inbound: list) -> dict:
    """One layer entry of a Keras 2 functional config."""
    return {
        "class_name": cls,
        "config": {"name": name, "trainable": True, "dtype": "float32", **config},
        "name": name,
        "inbound_nodes": inbound,
    }


def keras_config(units: int = 3, features: int = 4) -> dict[str, Any]:
    """A Keras 2 functional model config: an input and one Dense layer."""
    layers = [
        keras_layer("InputLayer", "input_1", {"batch_input_shape": [None, features]}, []),
        keras_layer(
            "Dense", "dense", {"units": units, "activation": "linear", "use_bias": True}, [[["input_1", 0, 0, {}]]]
        ),
    ]
    return {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": layers,
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["dense", 0, 0]],
        },
    }


def write_keras_h5(
    path: Path, kernel: str = "plain", target: str = "", config: dict | None = None, units: int = 3, features: int = 4
) -> Path:
    """A legacy Keras ``.h5`` file whose Dense kernel is stored ``kernel``: ``plain``,
    ``external`` (raw storage in the file ``target``), ``link`` (an external link to
    dataset ``/k`` of the HDF5 file ``target``), ``vds`` (a virtual dataset mapped from
    it) or ``gzip`` (compressed zeros: tiny on disk, ``features x units`` floats read)."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config or keras_config(units, features))
        handle.attrs["keras_version"] = "2.15.0"
        group = handle.create_group("model_weights").create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        inner = group.create_group("dense")
        shape = (features, units)
        if kernel == "external":
            inner.create_dataset("kernel:0", shape=shape, dtype="f4", external=[(target, 0, SECRET.nbytes)])
        elif kernel == "link":
            inner["kernel:0"] = h5py.ExternalLink(target, "/k")
        elif kernel == "vds":
            layout = h5py.VirtualLayout(shape=shape, dtype="f4")
            layout[:] = h5py.VirtualSource(target, "k", shape=shape)
            inner.create_virtual_dataset("kernel:0", layout)
        elif kernel == "gzip":
            inner.create_dataset("kernel:0", shape=shape, dtype="f4", compression="gzip", fillvalue=0.0)
        else:
            inner["kernel:0"] = np.full(shape, 0.5, np.float32)
        inner["bias:0"] = np.zeros(units, np.float32)
    return path


def write_secret_h5(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        handle["k"] = SECRET.reshape(4, 3)
    return path


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def onnx_model(nodes: list, initializers: list | None = None, opset: int = 17, ir: int = 8, out: str = "y") -> Any:
    """A model of ``nodes`` on input ``x`` (1, 12) with output ``out`` (1, 12)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=initializers or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def external_tensor(name: str, entries: dict[str, str]) -> TensorProto:
    """A (12,) float tensor whose values are in an external file, with ``entries`` as its
    external_data key/values (location, offset, length)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[12])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def constant_add(tensor: TensorProto) -> Any:
    """``y = x + c`` where ``c`` is a Constant node holding ``tensor``."""
    return onnx_model(
        [
            helper.make_node("Constant", [], ["c"], name="const", value=tensor),
            helper.make_node("Add", ["x", "c"], ["y"], name="add"),
        ]
    )


def initializer_add(tensor: TensorProto) -> Any:
    """``y = x + w`` where ``w`` is the initializer ``tensor``."""
    return onnx_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [tensor])


def plain_add() -> Any:
    return initializer_add(numpy_helper.from_array(np.ones(12, np.float32), "w"))


def constant(name: str, value: np.ndarray) -> Any:
    """A Constant node named ``make_<name>`` writing ``name``."""
    return helper.make_node("Constant", [], [name], name=f"make_{name}", value=numpy_helper.from_array(value, name))


def endless_loop() -> Any:
    """``y = x + c`` where ``c`` is a Loop of 2**62 iterations over constants only."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [12]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [12]),
        ],
        initializer=[numpy_helper.from_array(np.ones(12, np.float32), "one")],
    )
    return onnx_model(
        [
            constant("trips", np.array(2**62, np.int64)),
            constant("cond", np.array(True)),
            constant("start", np.zeros(12, np.float32)),
            helper.make_node("Loop", ["trips", "cond", "start"], ["c"], name="loop", body=body),
            helper.make_node("Add", ["x", "c"], ["y"], name="add"),
        ]
    )


def outer_product(size: int) -> Any:
    """``y = x + sum(a * b)`` with ``a`` (size, 1) and ``b`` (1, size) constants: small
    inputs, a product of size**2 floats (node ``outer``)."""
    return onnx_model(
        [
            constant("a", np.ones((size, 1), np.float32)),
            constant("b", np.ones((1, size), np.float32)),
            helper.make_node("Mul", ["a", "b"], ["ab"], name="outer"),
            helper.make_node("ReduceSum", ["ab"], ["s"], name="sum", keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"], name="add"),
        ]
    )


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``surgery ARGV`` in this process: exit code, stdout, stderr; never a traceback."""
    from surgery.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err
