"""Reduced-precision deploy files: FP16 (onnxconverter-common) and INT8 (onnxruntime's
static QDQ quantizer, calibrated on images the test writes), checked against the float32
model by ``verify``, and the mistakes a user makes with them refused before writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from surgery.cli import main

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "surgery" / "zoo" / "digits_cnn.pt"


def _write_image(path: Path, pixels: np.ndarray) -> None:
    """A PNG (grey or RGB) or a JPEG (colour) written by PyAV's encoders."""
    import av

    colour = pixels.ndim == 3
    codec, stored = ("mjpeg", "yuvj420p") if path.suffix == ".jpg" else ("png", "rgb24" if colour else "gray")
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24" if colour else "gray")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = pixels.shape[1], pixels.shape[0], stored
        for packet in [*stream.encode(frame.reformat(format=stored)), *stream.encode()]:
            container.mux(packet)


def _digits(folder: Path, start: int, count: int) -> Path:
    """scikit-learn's digits (what the shipped CNN was trained on) as 8x8 grey PNGs."""
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    images = load_digits().images[start : start + count]
    for index, image in enumerate(images):
        _write_image(folder / f"{index:03d}.png", (image * 16).clip(0, 255).astype(np.uint8))
    return folder


def _spec(folder: Path, onnx_block: str) -> Path:
    spec = folder / "spec.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{WEIGHTS}" }} input_shape: [1, 1, 8, 8] }}\n'
        f"output {{ onnx {{ {onnx_block} }} }}\n"
    )
    return spec


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    _digits(folder / "calib", 0, 48)
    _digits(folder / "check", 500, 48)
    return folder


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output}


def test_int8_quantizes_every_convolution_but_the_excluded_and_agrees_with_float32(images, tmp_path, capsys):
    spec = _spec(
        images,
        'precision: INT8 keep_float: "features.conv1" calibration { images: "calib" check: "check" }',
    )
    out = tmp_path / "out"
    assert main(["apply", "-q", str(spec), "-o", str(out), "--verify"]) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert "INT8 file vs float32 on 48 of the check images" in printed
    model = onnx.load(out / "model.onnx")
    producers = _producers(model)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        fed = [producers.get(name) for name in conv.input[:2]]
        quantized = all(node is not None and node.op_type == "DequantizeLinear" for node in fed)
        assert quantized == (conv.name != "features.conv1"), conv.name
    weights = {t.name: t for t in model.graph.initializer}
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in weights.values())
    # per-channel: each quantized kernel has one scale per output channel
    scales = [
        numpy_helper.to_array(weights[node.input[1]])
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and weights.get(node.input[0]) is not None
        and weights[node.input[0]].data_type == onnx.TensorProto.INT8
        and len(weights[node.input[0]].dims) == 4
    ]
    assert scales and all(s.ndim == 1 and s.size > 1 for s in scales)
    report = json.loads((out / "report.json").read_text())["verify"]["precision"]
    assert report["precision"] == "INT8" and report["inputs"] == 48
    assert report["top1_agreement"] >= 0.97  # 1.0 here; a held-out half, 48 images
    assert report["bytes"] < 0.4 * report["fp32_bytes"]
    errors = [row["max_rel"] for row in report["worst_layers"]]
    assert 0 < len(errors) <= 10 and errors == sorted(errors, reverse=True)
    assert errors[0] < 0.2  # each layer's value as the next layer reads it
    assert "The INT8 file against float32" in (out / "report.html").read_text()
    # it runs in onnxruntime and classifies the held-out digits as the float32 model does
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"


def test_fp16_keeps_io_float32_and_the_named_layers_float(images, tmp_path, capsys):
    spec = _spec(images, 'precision: FP16 keep_float: "classifier.fc2" calibration { images: "check" }')
    out = tmp_path / "out"
    assert main(["apply", "-q", str(spec), "-o", str(out), "--verify"]) == 0, capsys.readouterr()
    model = onnx.load(out / "model.onnx")
    weights = {t.name: t.data_type for t in model.graph.initializer}
    assert weights["features.conv2.weight"] == onnx.TensorProto.FLOAT16
    assert weights["classifier.fc2.weight"] == onnx.TensorProto.FLOAT
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"
    report = json.loads((out / "report.json").read_text())["verify"]["precision"]
    assert report["top1_agreement"] == 1.0
    assert report["max_rel"] < 5e-3  # FP16's 11 bits through 5 layers


def test_int8_of_a_net_without_convolutions_is_dynamic(tmp_path: Path, capsys) -> None:
    import torch

    from surgery.emitters.onnx_model import emit_onnx
    from surgery.importers.torch_fx import import_torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    emit_onnx(import_torch(mlp, (1, 32)), tmp_path / "mlp.onnx")
    spec = tmp_path / "spec.prototxt"
    spec.write_text('source { onnx { path: "mlp.onnx" } }\noutput { onnx { precision: INT8 } }\n')
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out"), "--verify"]) == 0, capsys.readouterr()
    model = onnx.load(tmp_path / "out" / "model.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops, ops
    report = json.loads((tmp_path / "out" / "report.json").read_text())["verify"]["precision"]
    assert report["inputs_from"].startswith("seeded random inputs") and report["top1_agreement"] >= 0.9


def test_calibrating_on_the_wrong_images_falls_below_the_bar(images, tmp_path, capsys) -> None:
    """All-black calibration images leave activations' ranges near zero: the file then
    disagrees with float32 on real digits, and verify says so with exit 1."""
    black = tmp_path / "black"
    black.mkdir()
    for index in range(8):
        _write_image(black / f"{index}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "check").symlink_to(images / "check")
    spec = _spec(tmp_path, 'precision: INT8 calibration { images: "black" check: "check" }')
    assert main(["verify", str(spec)]) == 1
    printed = capsys.readouterr().out
    assert "BELOW THE BAR" in printed and "verification FAILED" in printed


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ('precision: INT8 calibration { images: "empty" }', "holds no images"),
        ('precision: INT8 calibration { images: "nowhere" }', "is not a folder"),
        ('precision: INT8 calibration { images: "calib" count: 0 }', "count 0 reads no image"),
        ('precision: INT8 calibration { images: "colour" }', "has 3 colour channels, the net's input 1"),
        ('precision: INT8 calibration { images: "broken" }', "cannot be decoded"),
        ("precision: INT8", "needs calibration images"),
        ('precision: FP16 external_data: true calibration { images: "calib" }', "external_data"),
        ('calibration { images: "calib" }', "applies to a reduced precision"),
        ('precision: INT8 agreement: 1.5 calibration { images: "calib" }', "agreement 1.5"),
        ('precision: INT8 keep_float: "features.conv9" calibration { images: "calib" }', "conv9"),
    ],
)
def test_precision_mistakes_are_one_located_error(block: str, words: str, images, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "calib").symlink_to(images / "calib")
    (tmp_path / "colour").mkdir()
    _write_image(tmp_path / "colour" / "a.jpg", np.full((8, 8, 3), 128, np.uint8))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    spec = _spec(tmp_path, block)
    out = tmp_path / "out"
    assert main(["apply", "-q", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and f"{spec}:" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_clip_model_calibrates_on_clips_sampled_as_features_samples_them(tmp_path: Path, capsys) -> None:
    from sklearn.datasets import load_digits
    from video_files import write_video

    digits = load_digits().images
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        frames = [np.kron(digits[i], np.ones((2, 2))) * 16 for i in rng.integers(0, len(digits), 12)]
        write_video(tmp_path / "clips" / f"c{index}.mp4", np.stack(frames).clip(0, 255).astype(np.uint8))
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{WEIGHTS}" }} input_shape: [1, 1, 8, 8] }}\n'
        'edit { sequence { at: "features.pool2" frames: 8\n'
        '  layer { name: "lstm" type: "LSTM" recurrent_param { num_output: 16 return_sequences: false } }\n'
        '  layer { name: "scores" type: "InnerProduct" inner_product_param { num_output: 5 } } } }\n'
        'output { onnx { precision: INT8 calibration { clips: "clips" } } }\n'
    )
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out"), "--verify"]) == 0, capsys.readouterr()
    report = json.loads((tmp_path / "out" / "report.json").read_text())["verify"]["precision"]
    assert report["inputs"] == 4 and report["inputs_from"] == "the calibration clips"
    model = onnx.load(tmp_path / "out" / "model.onnx")
    assert sum(node.op_type == "QuantizeLinear" for node in model.graph.node) >= 3
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 8, 1, 8, 8), np.float32)})[0]
    assert scores.shape == (1, 5)


def test_a_precision_on_an_output_that_cannot_take_one_is_located(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
        "output { caffe { precision: INT8 } }\n"
    )
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:2:" in err and "precision" in err, err
    assert not (tmp_path / "out").exists()
