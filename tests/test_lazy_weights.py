"""`inspect` and `plan` never read weights; `apply` reads each one when it writes it.

The sharpest check: an ONNX model whose external data file is emptied still plans and
inspects (its weights are never touched), while `apply` then fails cleanly. For every
source format, the blobs a plan copied from the source are still unread afterwards.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from caffe_nets import MINI_GOOGLENET, mini_googlenet_weights, write_net
from toy_nets import toy_cnn

import surgery
from surgery.cli import main
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.caffemodel import stored_weights
from surgery.spec.schema import caffe_class

EDIT = 'edit {{ classifier {{ layer: "{layer}" num_output: 3 }} }}\n'


def _source_blobs(net) -> list:
    return [blob for layer in net.layers() for blob in layer.blobs.values() if blob.origin.kind == "source"]


def _spec(folder: Path, source: str, layer: str) -> Path:
    spec = folder / "spec.prototxt"
    spec.write_text(f"source {{ {source} }}\nseed: 1\n" + EDIT.format(layer=layer))
    return spec


def test_onnx_external_data_is_never_read_by_plan_or_inspect(tmp_path: Path, capsys) -> None:
    model = emit_onnx(surgery.load(toy_cnn(), (1, 3, 16, 16)), tmp_path / "toy.onnx", external_data=True)
    data = model.with_name("toy.onnx.data")
    spec = _spec(tmp_path, 'onnx { path: "toy.onnx" }', "classifier.fc2")
    planned = surgery.plan(spec)
    assert planned.net.layer("classifier.fc2").blobs["weight"].shape == (3, 32)
    assert _source_blobs(planned.net) and not any(b.is_loaded for b in _source_blobs(planned.net))

    data.write_bytes(b"")  # the weights are gone; their description is not
    assert surgery.plan(spec).report.rows
    assert main(["inspect", str(model)]) == 0
    assert "features.block1_conv1" in capsys.readouterr().out
    with pytest.raises(ModelFormatError, match=r"toy.onnx.data holds 0 bytes for a tensor of .*truncated"):
        surgery.apply(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("external", [False, True])
def test_onnx_weights_load_on_first_use(external: bool, tmp_path: Path) -> None:
    source = toy_cnn()
    model = emit_onnx(surgery.load(source, (1, 3, 16, 16)), tmp_path / "toy.onnx", external_data=external)
    net = surgery.load(model)
    assert not any(b.is_loaded for b in _source_blobs(net))
    assert torch.equal(net.layer("features.block1_conv1").blobs["weight"].data, source.features.block1_conv1.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(net).eval()(x).numpy(), source(x).numpy(), atol=1e-5)


def test_torch_and_caffe_sources_stay_unread_by_plan(tmp_path: Path) -> None:
    torch.save(toy_cnn().state_dict(), tmp_path / "toy.pt")
    tests = Path(__file__).resolve().parent
    spec = _spec(
        tmp_path,
        f'torch {{ factory: "{tests / "toy_nets.py"}:ToyCNN" weights: "toy.pt" }} input_shape: [1, 3, 16, 16]',
        "classifier.fc2",
    )
    net = surgery.plan(spec).net
    assert _source_blobs(net) and not any(b.is_loaded for b in _source_blobs(net))

    write_net(tmp_path / "caffe", "mini", MINI_GOOGLENET, mini_googlenet_weights())
    spec = _spec(
        tmp_path,
        'caffe { prototxt: "caffe/mini.prototxt" weights: "caffe/mini.caffemodel" } input_shape: [1, 3, 32, 32]',
        "loss3/classifier",
    )
    net = surgery.plan(spec).net
    assert _source_blobs(net) and not any(b.is_loaded for b in _source_blobs(net))
    # the new classifier's filler weights (and the Caffe layers without trained weights) too
    assert not any(blob.is_loaded for layer in net.layers() for blob in layer.blobs.values())
    assert net.layer("loss3/classifier").blobs["weight"].origin.kind == "filler"


def _unpacked_blob(values: list[float], shape: tuple[int, ...]) -> bytes:
    """A BlobProto whose `data` is written one float per field (legal, unpacked)."""
    head = caffe_class("BlobProto")()
    head.shape.dim.extend(shape)
    data_field = caffe_class("BlobProto").DESCRIPTOR.fields_by_name["data"].number
    tag = bytes([data_field << 3 | 5])
    return head.SerializeToString() + b"".join(tag + struct.pack("<f", v) for v in values)


def test_caffemodel_blob_encodings(tmp_path: Path) -> None:
    """Packed float data (what protobuf writes) is viewed in the mapped file; unpacked
    floats and double_data are read through protobuf; a blob whose value count does not
    match its shape is a clear error (when packed, as soon as the file is opened)."""
    net = caffe_class("NetParameter")()
    layer = net.layer.add(name="packed", type="InnerProduct")
    layer.blobs.add().CopyFrom(_blob(np.arange(6, dtype=np.float32).reshape(2, 3)))
    doubles = net.layer.add(name="doubles", type="InnerProduct").blobs.add()
    doubles.shape.dim.extend([2])
    doubles.double_data.extend([0.5, -1.5])
    layer_field = caffe_class("LayerParameter").DESCRIPTOR
    name_tag = bytes([layer_field.fields_by_name["name"].number << 3 | 2])
    blob_tag = bytes([layer_field.fields_by_name["blobs"].number << 3 | 2])
    blob = _unpacked_blob([3.0, 4.0, 5.0], (3,))
    unpacked_layer = name_tag + bytes([8]) + b"unpacked" + blob_tag + bytes([len(blob)]) + blob
    path = tmp_path / "enc.caffemodel"
    path.write_bytes(net.SerializeToString() + b"\xa2\x06" + bytes([len(unpacked_layer)]) + unpacked_layer)

    stored = stored_weights(path)
    assert stored["packed"][0].values is not None
    np.testing.assert_array_equal(stored["packed"][0].array(), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(stored["doubles"][0].array(), [0.5, -1.5])
    assert stored["unpacked"][0].values is None
    np.testing.assert_array_equal(stored["unpacked"][0].array(), [3.0, 4.0, 5.0])
    wrong_net = caffe_class("NetParameter")()
    wrong = wrong_net.layer.add(name="wrong", type="InnerProduct").blobs.add()
    wrong.shape.dim.extend([4])
    wrong.data.extend([1.0, 2.0])
    (tmp_path / "wrong.caffemodel").write_bytes(wrong_net.SerializeToString())
    with pytest.raises(ModelFormatError, match=r"'wrong' stores 8 bytes for shape \(4,\) \(16 bytes\)"):
        stored_weights(tmp_path / "wrong.caffemodel")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ModelFormatError, match=r"not a readable caffemodel .*truncated"):
        stored_weights(path)


def _blob(array: np.ndarray):
    proto = caffe_class("BlobProto")()
    proto.shape.dim.extend(array.shape)
    proto.data.extend(array.reshape(-1).tolist())
    return proto


#: One spec per operation that computes new weights from old ones (on the digits CNN's
#: layer names): plan sets up each computation and runs none of them.
COMPUTING_EDITS = {
    "fold_batchnorm": "edit { fold_batchnorm { } }",
    "keep_classes": 'edit { classifier { layer: "classifier.fc2" num_output: 4 keep_classes: "3" keep_classes: "5" } }',
    "propagate_slice": 'edit { classifier { layer: "features.conv2" num_output: 24 propagate: SLICE } }',
    "replace_slice": 'edit { replace { layer: "features.conv3" propagate: SLICE by { name: "features.conv3" '
    'type: "Convolution" convolution_param { num_output: 48 kernel_size: 3 pad: 1 } } } }',
    "gate": 'edit { eltwise { name: "gate" operation: PROD bottom: "features.pool1" near_identity: true '
    'layer { name: "gate_conv" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 } } } }',
    "collapse_fit": 'edit { collapse { first: "features.conv1" second: "features.conv2" name: "c12" mode: FIT } }',
    "collapse_exact": 'edit { fold_batchnorm { } } edit { remove { layer: "features.relu1" } } '
    'edit { collapse { first: "features.conv1" second: "features.conv2" name: "c12" accept_border: true } }',
    "fc_to_conv": 'edit { remove { layer: "flatten" } } edit { fc_to_conv { layer: "classifier.fc1" } }',
}


@pytest.fixture(scope="module")
def digits_external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from surgery.zoo import digits_cnn

    folder = tmp_path_factory.mktemp("computing")
    emit_onnx(surgery.load(digits_cnn(), (1, 1, 8, 8)), folder / "digits.onnx", external_data=True)
    for name, edits in COMPUTING_EDITS.items():
        (folder / f"{name}.prototxt").write_text(f'source {{ onnx {{ path: "digits.onnx" }} }}\nseed: 3\n{edits}\n')
    return folder


@pytest.mark.parametrize("name", sorted(COMPUTING_EDITS))
def test_plan_of_an_edit_computing_from_weights_reads_none(name: str, digits_external: Path, tmp_path: Path) -> None:
    spec = digits_external / f"{name}.prototxt"
    applied = surgery.apply(spec, tmp_path / "out")  # the computations run at apply, and write
    planned = surgery.plan(spec)
    assert not any(blob.is_loaded for layer in planned.net.layers() for blob in layer.blobs.values())

    def rows(report: Any) -> list:  # a planned fit says its error comes at apply: the origin's kind
        return [(r["name"], r["output_shape"], str(r["origin"]).split(":")[0]) for r in report.rows]

    assert rows(planned.report) == rows(applied.report)


def test_plans_of_edits_computing_from_weights_run_without_torch(digits_external: Path) -> None:
    # torch made unimportable, and the weights file emptied: every plan still runs
    data = digits_external / "digits.onnx.data"
    saved = data.read_bytes()
    code = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch imported')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import surgery\n"
        f"for name in {sorted(COMPUTING_EDITS)!r}:\n"
        f"    surgery.plan({str(digits_external)!r} + '/' + name + '.prototxt')\n"
    )
    try:
        data.write_bytes(b"")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    finally:
        data.write_bytes(saved)
    assert run.returncode == 0, run.stderr[-3000:]
