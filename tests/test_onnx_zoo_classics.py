"""The ONNX model zoo's classic image models (AlexNet, GoogLeNet, Inception-v2, ResNet-50,
ShuffleNet, SqueezeNet, VGG19, ZFNet-512, DenseNet-121: opset 9, IR 3, unnamed nodes,
initializers as graph inputs, Caffe's ceil-mode pooling as asymmetric pads, BatchNorm +
Scale as constant computations, pre-13 Softmax) load, compute what onnxruntime computes
on the file itself, and take a classifier resize named by the output tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_zoo import CLASSICS, LIGHT, zoo_classic

import surgery
from surgery.api import verify

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not LIGHT.is_dir(), reason="this onnx package ships no light zoo models")
BIG = {"bvlc_alexnet", "vgg19", "zfnet512"}  # 61-144M parameters: seconds to write and run
CASES = [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name for name in CLASSICS]


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_zoo")


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", CASES)
def test_classic_loads_and_matches_onnxruntime(name: str, zoo_folder: Path) -> None:
    path = zoo_classic(name, zoo_folder)
    net = surgery.load(path)
    shape = net.input_layers()[0].params["shape"]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    reference = _reference(path, x)
    with torch.no_grad():
        ours = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    scale = float(np.abs(reference).max())
    assert float(np.abs(ours - reference).max()) <= 1e-5 * scale, "emitted torch vs onnxruntime on the file"
    emitted = zoo_folder / f"{name}.emitted.onnx"
    surgery.save_onnx(net, emitted)
    assert float(np.abs(_reference(emitted, x) - reference).max()) <= 1e-5 * scale, "emitted ONNX vs the file"
    # unnamed nodes are named after their first output: the names Netron shows
    assert all(layer.name in layer.outputs or layer.type == "Input" or "/" in layer.name for layer in net.layers())


@pytest.mark.parametrize("name", CASES)
def test_classic_classifier_resize_by_tensor_name(name: str, zoo_folder: Path, tmp_path: Path) -> None:
    path = zoo_classic(name, zoo_folder)
    head = [layer for layer in surgery.load(path).layers() if layer.blobs][-1]
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        f'source {{ onnx {{ path: "{path}" }} }}\nseed: 3\n'
        f'edit {{ classifier {{ layer: "{head.outputs[0]}" num_output: 7 }} }}\n'
    )
    result = verify(spec)
    assert result.ok, [(c.what, c.blob, c.max_rel) for c in result.comparisons]
    planned = surgery.plan(spec)
    assert planned.net.known_shape(planned.net.outputs[0])[1] == 7
