"""Keras files that TensorFlow's Keras 2 wrote: the video model its users ask for,
TimeDistributed(a nested Functional "vgg16") -> LSTM -> Dense(11), saved by tf_keras 2.21 as
legacy HDF5 (``tests/data/keras2``, made by the script beside it, with TensorFlow's
``predict`` on a seeded clip recorded there), and the same file in older standalone
Keras 2's spelling (module ``keras.engine.functional``, class ``Model``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import surgery
from surgery.verify import onnx_session

DATA = Path(__file__).resolve().parent / "data" / "keras2"


def _outputs(net: surgery.Net, clip: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        ours = surgery.to_torch(net).eval()(torch.from_numpy(clip)).numpy()
    session = onnx_session(surgery.save_onnx(net, tmp_path / "video.onnx"))
    return ours, session.run(None, {session.get_inputs()[0].name: clip})[0]


@pytest.mark.parametrize("nhwc", [False, True], ids=["ir_layout", "keras_layout"])
def test_tf_keras2_video_model_matches_tensorflows_predict(nhwc: bool, tmp_path: Path) -> None:
    recorded = np.load(DATA / "model_io.npz")
    net = surgery.load(DATA / "model.h5", nhwc_input=nhwc)
    clip = recorded["clip"] if nhwc else np.ascontiguousarray(recorded["clip"].transpose(0, 1, 4, 2, 3))
    torch_out, onnx_out = _outputs(net, clip, tmp_path)
    np.testing.assert_allclose(torch_out, recorded["predict"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx_out, recorded["predict"], atol=1e-5, rtol=0)
    assert {"lstm", "scores"} <= {layer.name for layer in net.layers()}


def test_standalone_keras2_spelling_of_the_nested_model(tmp_path: Path) -> None:
    """Older Keras 2 files name the nested model's class ``Model`` in module
    ``keras.engine.functional``; no installable TensorFlow writes them, so the test
    rewrites the config of the tf_keras file that way."""
    path = tmp_path / "old.h5"
    shutil.copy(DATA / "model.h5", path)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        inner = config["config"]["layers"][1]["config"]["layer"]
        inner.update({"class_name": "Model", "module": "keras.engine.functional"})
        inner.pop("registered_name", None)
        file.attrs["model_config"] = json.dumps(config)
    recorded = np.load(DATA / "model_io.npz")
    torch_out, _ = _outputs(surgery.load(path, nhwc_input=True), recorded["clip"], tmp_path)
    np.testing.assert_allclose(torch_out, recorded["predict"], atol=1e-5, rtol=0)


def test_a_custom_class_is_still_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "custom.h5"
    shutil.copy(DATA / "model.h5", path)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        config["config"]["layers"][1]["config"]["layer"]["module"] = "my_project.models"
        file.attrs["model_config"] = json.dumps(config)
    with pytest.raises(surgery.ModelFormatError, match=r"custom object 'vgg16' \(class my_project.models.Functional\)"):
        surgery.load(path)
