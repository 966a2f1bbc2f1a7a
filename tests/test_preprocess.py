"""Preprocessing as part of the model's description: filled from what the source says
(Caffe's transform_param, a Keras Rescaling input, torchvision weights: see
test_pretrained), overridden by the spec field by field, refused when it cannot make
the net's input, and carried to the report, model.py and the ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from caffe_nets import write_net

import surgery
from surgery.cli import main
from surgery.preprocess import Preprocess
from surgery.spec.schema import caffe_class

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { mirror: true crop_size: 12 mean_value: 1 } data_param { source: "x" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 12 %s } data_param { source: "y" batch_size: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""


def _caffe_spec(tmp_path: Path, transform: str, preprocess: str = "") -> Path:
    write_net(tmp_path, "tiny", NET % transform, {})
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        f'source {{ caffe {{ prototxt: "tiny.prototxt" }} {preprocess} }}\noutput {{ pytorch {{ }} onnx {{ }} }}\n'
    )
    return spec


def test_caffe_transform_param_of_the_test_phase_is_the_preprocessing(tmp_path: Path) -> None:
    spec = _caffe_spec(tmp_path, "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017")
    block = surgery.plan(spec).net.preprocess
    assert block == Preprocess(
        channel_order="BGR", mean=(104.0, 117.0, 123.0), scale=pytest.approx(0.017), crop=(12,), crop_offset="floor"
    )
    assert block.origin == {"*": "caffe transform_param"}
    # (pixel - mean) * scale per channel, Caffe's formula
    pixels = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)
    want = (pixels.astype(np.float32) - np.array([104, 117, 123], np.float32)) * np.float32(0.017)
    np.testing.assert_allclose(block.finish(pixels, (12, 12)), np.moveaxis(want, -1, 0), rtol=1e-6, atol=1e-5)


def test_a_mean_file_becomes_per_channel_means(tmp_path: Path) -> None:
    blob = caffe_class("BlobProto")()
    blob.shape.dim.extend([1, 3, 2, 2])
    blob.data.extend([float(v) for v in [10, 20, 30, 40, 1, 1, 1, 1, 0, 0, 0, 8]])
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    block = surgery.plan(_caffe_spec(tmp_path, 'mean_file: "mean.binaryproto"')).net.preprocess
    assert block.mean == (25.0, 1.0, 2.0) and "mean_file" in block.origin["*"]


def test_the_spec_overrides_field_by_field_and_every_output_carries_it(tmp_path: Path) -> None:
    spec = _caffe_spec(tmp_path, "mean_value: 104 mean_value: 117 mean_value: 123", "preprocess { resize: 16 std: 2 }")
    result = surgery.apply(spec, tmp_path / "out")
    report = json.loads((result.out_dir / "report.json").read_text())["preprocess"]
    assert report["mean"] == [104.0, 117.0, 123.0] and report["std"] == [2.0] and report["resize"] == [16]
    assert report["origin"] == {"*": "caffe transform_param", "resize": "spec", "std": "spec"}
    assert surgery.load_torch_folder(result.out_dir / "torch").PREPROCESSING == report
    props = {p.key: p.value for p in onnx.load(str(result.out_dir / "model.onnx")).metadata_props}
    assert json.loads(props["surgery.preprocessing"]) == report
    assert 'id="preprocess"' in (result.out_dir / "report.html").read_text()


def test_nothing_stated_is_pixels_to_0_1_in_the_nets_channels(tmp_path: Path) -> None:
    block = surgery.plan(_caffe_spec(tmp_path, "")).net.preprocess
    assert block.channel_order == "BGR" and block.crop == (12,)  # a crop alone still says BGR (Caffe's order)
    spec = tmp_path / "torch.prototxt"
    spec.write_text('source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n')
    block = surgery.plan(spec).net.preprocess
    assert block.channel_order == "GRAY" and block.scale == pytest.approx(1 / 255) and block.origin == {"*": "default"}


@pytest.mark.parametrize(
    ("preprocess", "message"),
    [
        ("preprocess { crop: 10 }", "crop [10] does not make the net's input size [12, 12]"),
        ("preprocess { channel_order: GRAY }", "channel_order GRAY makes 1 channels; the net's input has 3"),
        ("preprocess { mean: [1, 2] }", "preprocess mean has 2 values for 3 channels"),
        ("preprocess { std: 0 }", "preprocess std has a zero"),
        ("preprocess { mean: nan }", "preprocess mean [nan] is not a finite number"),
        ("preprocess { scale: inf }", "preprocess scale [inf] is not a finite number"),
        ("preprocess { resize: [1, 2, 3] }", "resize takes one value or two"),
        ("preprocess { chanel_order: BGR }", "chanel_order"),
    ],
)
def test_a_preprocessing_that_cannot_make_the_input_is_a_located_error(
    tmp_path: Path, preprocess: str, message: str, capsys
) -> None:
    spec = _caffe_spec(tmp_path, "", preprocess)
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert message in err and "spec.prototxt:1" in err and "Traceback" not in err


def test_a_keras_rescaling_input_means_raw_pixels(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    x = keras.Input((6, 6, 3))
    y = keras.layers.Rescaling(1 / 255)(x)
    model = keras.Model(x, keras.layers.Conv2D(2, 3)(y))
    model.save(tmp_path / "m.keras")
    spec = tmp_path / "k.prototxt"
    spec.write_text('source { keras { path: "m.keras" } }\n')
    block = surgery.plan(spec).net.preprocess
    assert block.scale == 1.0 and block.mean == (0.0,) and block.channel_order == "RGB"
    assert "rescaling" in block.origin["*"]
