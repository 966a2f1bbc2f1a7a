"""ONNX as other converters write it: constants written as computations, unnamed nodes,
uneven pooling pads and ``auto_pad``, pre-13 Softmax. Each small file is built here with
onnx.helper and compared with onnxruntime on the file itself (emitted torch and emitted
ONNX, 1e-5 of the output's scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import surgery
from surgery.errors import ShapeError

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(0)


def _model(nodes, inputs, output, initializers=(), opset: int = 9, shape=(2, 3, 7, 7)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int64), k)
            for k, v in initializers
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _pool(op: str, pads, **attrs) -> onnx.ModelProto:
    return _model(
        [helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=pads, **attrs)], ["x"], "y"
    )


def _auto(op: str, auto: str) -> onnx.ModelProto:
    return _model(
        [helper.make_node(op, ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad=auto)],
        ["x"],
        "y",
        shape=(2, 3, 7, 6),
    )


SCALE_AS_COMPUTATION = _model(  # Caffe's Scale as converters write it: Unsqueeze(w) * x + Unsqueeze(b)
    [
        helper.make_node("Unsqueeze", ["w"], ["w4"], axes=[1, 2]),
        helper.make_node("Mul", ["x", "w4"], ["xw"]),
        helper.make_node("Unsqueeze", ["b"], ["b4"], axes=[1, 2]),
        helper.make_node("Add", ["xw", "b4"], ["y"]),
    ],
    ["x"],
    "y",
    [("w", RNG.standard_normal(3)), ("b", RNG.standard_normal(3))],
)

SHAPE_FROM_CONSTANTS = _model(  # a reshape target computed from constants (Concat of Constants)
    [
        helper.make_node("Constant", [], ["keep"], value=numpy_helper.from_array(np.array([2], np.int64))),
        helper.make_node("Constant", [], ["rest"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["keep", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ],
    ["x"],
    "y",
    opset=11,
)

CASES = {
    "maxpool ceil pads [0,0,1,1]": _pool("MaxPool", [0, 0, 1, 1]),
    "avgpool ceil pads, real cells only": _pool("AveragePool", [0, 0, 1, 1]),
    "avgpool uneven pads counting padding": _pool("AveragePool", [0, 0, 1, 1], count_include_pad=1),
    "avgpool more padding at the start": _pool("AveragePool", [1, 1, 0, 0]),
    "maxpool more padding at the start": _pool("MaxPool", [1, 0, 0, 1]),
    "maxpool SAME_UPPER": _auto("MaxPool", "SAME_UPPER"),
    "avgpool SAME_LOWER": _auto("AveragePool", "SAME_LOWER"),
    "maxpool VALID": _auto("MaxPool", "VALID"),
    "softmax opset 9 over C*H*W": _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], ["x"], "y"),
    "softmax opset 11 over H*W": _model([helper.make_node("Softmax", ["x"], ["y"], axis=2)], ["x"], "y", opset=11),
    "scale as a constant computation": SCALE_AS_COMPUTATION,
    "reshape target from constants": SHAPE_FROM_CONSTANTS,
}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("case", CASES)
def test_converters_forms_match_onnxruntime(case: str, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(CASES[case], path)
    net = surgery.load(path)
    x = np.random.default_rng(1).standard_normal(net.input_layers()[0].params["shape"], dtype=np.float32)
    reference = _run(path, x)
    with torch.no_grad():
        ours = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    assert ours.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert float(np.abs(ours - reference).max()) <= 1e-5 * scale
    surgery.save_onnx(net, tmp_path / "out.onnx")
    assert float(np.abs(_run(tmp_path / "out.onnx", x) - reference).max()) <= 1e-5 * scale


def test_constant_computations_are_folded_away(tmp_path: Path) -> None:
    onnx.save(SCALE_AS_COMPUTATION, tmp_path / "m.onnx")
    net = surgery.load(tmp_path / "m.onnx")
    assert "Reshape" not in [layer.type for layer in net.layers()], "the Unsqueezes became constants"


def test_unnamed_nodes_take_their_output_names(tmp_path: Path) -> None:
    """Named after the first output (what Netron shows), unique, and data in the model."""
    odd = 'gpu_0/fc "x"\nlast'
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["conv1_1"]),
            helper.make_node("Relu", ["conv1_1"], ["relu"]),
            helper.make_node("Relu", ["relu"], [odd], name=""),
            helper.make_node("Relu", [odd], ["y"], name="kept"),
        ],
        ["x"],
        "y",
    )
    onnx.save(model, tmp_path / "m.onnx")
    net = surgery.load(tmp_path / "m.onnx")
    assert [layer.name for layer in net.layers()][1:] == ["conv1_1", "relu", odd, "kept"]
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(surgery.to_torch(net).eval()(x), torch.relu(x))


def test_a_constant_too_large_to_fold_is_refused_with_its_size(tmp_path: Path, monkeypatch) -> None:
    model = _model(
        [helper.make_node("ConstantOfShape", ["big_shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])],
        ["x"],
        "y",
        [("big_shape", np.array([2, 3, 7, 7], np.int64))],
    )
    onnx.save(model, tmp_path / "m.onnx")
    monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "1000")
    with pytest.raises(ShapeError, match=r"folding the constant computation of ONNX node 'big' \(ConstantOfShape\)"):
        surgery.load(tmp_path / "m.onnx")


def test_uneven_average_that_rounds_up_is_refused_by_name(tmp_path: Path) -> None:
    onnx.save(_pool("AveragePool", [0, 0, 1, 1], ceil_mode=1), tmp_path / "m.onnx")
    with pytest.raises(surgery.ModelFormatError, match=r"'y' \(AveragePool\) pads \[0, 0, 1, 1\] unevenly"):
        surgery.load(tmp_path / "m.onnx")
