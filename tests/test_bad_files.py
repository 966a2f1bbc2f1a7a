"""Bad files and bad places: every one ends in one clear error naming the file (or the
spec's line), never a traceback; nothing half-written; inputs untouched."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_nets import bn_blobs, write_net
from toy_nets import toy_cnn

import surgery
from surgery.cli import main
from surgery.errors import ModelFormatError, SurgeryError

CAFFE_NET = """name: "GoogleNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn_1" type: "BatchNorm" bottom: "conv" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", ["bvlc_googlenet_train_val.prototxt", "deploy.txt", "net"])
def test_a_caffe_net_is_told_from_a_spec_by_content(name: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / name
    path.write_text(CAFFE_NET)
    code, out, err = _run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "bn_1" in out and "relu" in out
    code, _, err = _run(capsys, "plan", "-q", str(path))
    assert code == 2 and f"{path}:2:1: this is a Caffe network definition, not a spec" in err, err
    assert "surgery inspect" in err


def test_caffe_batchnorm_with_three_param_entries_imports_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "deploy.prototxt"
    path.write_text(CAFFE_NET)
    net = surgery.load(path)  # no caffemodel: fillers
    assert set(net.layer("bn_1").blobs) == {"running_mean", "running_var"}
    assert all(b.lr_mult == 0 for b in net.layer("bn_1").blobs.values())
    text, model = write_net(tmp_path / "w", "deploy", CAFFE_NET, {"bn_1": bn_blobs(4)})
    assert set(surgery.load(text, weights=model).layer("bn_1").blobs) == {"running_mean", "running_var"}


@pytest.mark.parametrize("case", ["folder", "binary", "latin-1"])
def test_a_caffe_prototxt_that_is_not_text_gives_one_error(case: str, tmp_path: Path, capsys) -> None:
    target = tmp_path / "net.prototxt"
    if case == "folder":
        target.mkdir()
    elif case == "binary":
        target.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(300)))
    else:
        target.write_bytes(CAFFE_NET.replace("GoogleNet", "R\xe9seau").encode("latin-1"))
    spec = tmp_path / "s.prototxt"
    spec.write_text('seed: 1\nsource { caffe { prototxt: "net.prototxt" } }\n')
    code, _, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and err.startswith(f"error: {spec}:2:1: ") and "Traceback" not in err, err
    assert "net.prototxt" in err
    if case == "latin-1":
        assert f"{target}:1:9: byte 0xe9 is not UTF-8 text" in err
    code, _, err = _run(capsys, "inspect", str(target))
    assert code == 2 and err.startswith("error: ") and str(target) in err


def _toy_onnx(folder: Path) -> Path:
    net = surgery.load(toy_cnn(), (1, 3, 16, 16))
    return surgery.save_onnx(net, folder / "toy.onnx")


def test_bit_flipped_onnx_files_end_cleanly(tmp_path: Path, capsys) -> None:
    """Flip bits at many offsets of a small ONNX file: inspect and apply either succeed
    or give one error; never a traceback."""
    data = _toy_onnx(tmp_path).read_bytes()
    rng = random.Random(0)
    spec = tmp_path / "s.prototxt"
    spec.write_text(
        'source { onnx { path: "m.onnx" } }\nedit { lr { match: "*" lr_mult: 0 } }\noutput { pytorch { } }\n'
    )
    errors = 0
    for _trial in range(150):
        flipped = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 8))):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        (tmp_path / "m.onnx").write_bytes(bytes(flipped))
        for argv in (
            ["inspect", str(tmp_path / "m.onnx")],
            ["apply", "-q", str(spec), "-o", str(tmp_path / "out"), "--force"],
        ):
            code, _, err = _run(capsys, *argv)  # an escaping exception fails the test here
            assert code in (0, 2), err
            if code == 2:
                assert (
                    err.startswith("error: ")
                    and len([line for line in err.splitlines() if line.startswith("error")]) == 1
                )
                errors += 1
                break
    assert errors > 10, "the flips reach the parts the reader checks"


def test_an_onnx_initializer_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    import onnx

    path = _toy_onnx(tmp_path)
    model = onnx.load(path)
    model.graph.initializer[0].data_type = onnx.TensorProto.STRING
    onnx.save(model, path)
    with pytest.raises(ModelFormatError, match=r"initializer .* has data type 8"):
        surgery.load(path)


def test_a_weights_file_truncated_while_mapped_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """The sizes are checked against the file before any page is touched (touching a page
    past the new end would be SIGBUS)."""
    path = _toy_onnx(tmp_path)
    net = surgery.load(path)
    os.truncate(path, 200)
    blob = next(b for layer in net.layers() for b in layer.blobs.values() if b.numel > 100)
    with pytest.raises(ModelFormatError, match="was truncated while in use"):
        _ = blob.data  # reading the property is what fails


def test_a_caffemodel_whose_blob_does_not_fit_its_header_is_refused_at_load(tmp_path: Path) -> None:
    from surgery.spec.schema import caffe_class

    text, model = write_net(tmp_path, "n", CAFFE_NET, {"bn_1": bn_blobs(4)})
    net = caffe_class("NetParameter")()
    net.ParseFromString(model.read_bytes())
    blob = next(layer for layer in net.layer if layer.name == "bn_1").blobs[0]
    blob.shape.dim[0] = 5  # the header says 5 values, 4 are stored
    model.write_bytes(net.SerializeToString())
    with pytest.raises(ModelFormatError, match="stores 16 bytes for shape"):
        surgery.load(text, weights=model)


def test_eltwise_bottoms_in_either_order_make_the_same_skip_connection(capsys) -> None:
    """bottom[1] computed from bottom[0]: the result replaces the later blob."""
    model = toy_cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    f = model.features
    conv = f.block1_conv1(x)
    skip = f.block1_relu(f.block1_bn(conv)) + conv
    expected = model.classifier(torch.flatten(f.block2_pool(f.block2_relu(f.block2_conv1(f.block1_pool(skip)))), 1))
    notes = []
    for bottoms in (
        ["features.block1_conv1", "features.block1_relu"],
        ["features.block1_relu", "features.block1_conv1"],
    ):
        net = surgery.load(toy_cnn(), (2, 3, 16, 16))
        actions = surgery.eltwise(net, "g", bottoms, operation="SUM")
        assert [r.name for r, _ in net.consumers("g")] == ["features.block1_pool"]
        with torch.no_grad():
            got = surgery.to_torch(net).eval()(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        notes.append(any("is computed from" in a.detail for a in actions))
    assert notes == [True, False], "the report says when the order was turned round"


@pytest.mark.parametrize(
    "opset,ir,message",
    [(99, None, "opset 99 is outside"), (3, None, "opset 3 is outside"), (None, 99, "IR version 99 is outside")],
)
def test_onnx_versions_outside_the_installed_ones_are_refused_at_the_spec(
    opset, ir, message, toy_spec, tmp_path: Path, capsys
) -> None:
    fields = (f"opset: {opset} " if opset else "") + (f"ir_version: {ir}" if ir else "")
    spec = toy_spec(f"\noutput {{ onnx {{ {fields} }} }}")
    code, _, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and f"{spec}:5:1: {message}" in err, err


def _tiny_tmpfs(folder: Path, options: str):
    """A mounted tmpfs (root only); None where mounting is not allowed."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return folder if run.returncode == 0 else None


@pytest.mark.parametrize(
    "options,message", [("size=64k", "No space left on device"), ("ro,size=4m", "Read-only file system")]
)
def test_a_full_or_read_only_disk_says_what_failed_and_where(
    options: str, message: str, toy_spec, tmp_path: Path, capsys
) -> None:
    mounted = _tiny_tmpfs(tmp_path / "disk", options)
    if mounted is None:
        pytest.skip("mounting a tmpfs needs root (the monkeypatched test below covers the rest)")
    try:
        spec = toy_spec("")
        code, _, err = _run(capsys, "apply", "-q", str(spec), "-o", str(mounted / "out"))
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert message in err and str(mounted) in err, err
        assert list(mounted.iterdir()) == [], "nothing partial is left"
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_a_write_that_fails_with_enospc_says_what_failed_and_where(
    toy_spec, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Where no small disk can be mounted: the report's write raises ENOSPC."""
    from surgery.emitters.files import HashingWriter

    original = HashingWriter.write

    def full(self, data):
        if self.name.endswith("report.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(HashingWriter, "write", full)
    spec = toy_spec("")
    code, _, err = _run(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and "No space left on device" in err and "report.json" in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_surgery_errors_stay_in_one_family() -> None:
    assert issubclass(ModelFormatError, SurgeryError)
    assert np.dtype("float32").kind == "f"


@pytest.mark.parametrize("fmt", ["onnx", "torch", "caffe"])
def test_truncated_copies_of_every_format_end_cleanly(fmt: str, tmp_path: Path, capsys) -> None:
    """Every model format, cut at many lengths: apply ends in one error (or, where the cut
    leaves a complete file, success); never a traceback, never a half-written output."""
    if fmt == "onnx":
        model = _toy_onnx(tmp_path)
        source = 'onnx { path: "cut" }'
    elif fmt == "torch":
        model = tmp_path / "toy.pt"
        torch.save(toy_cnn().state_dict(), model)
        source = (
            f'torch {{ factory: "{Path(__file__).parent / "toy_nets.py"}:ToyCNN" weights: "cut" }} '
            "input_shape: [1, 3, 16, 16]"
        )
    else:
        (tmp_path / "net.prototxt").write_text(CAFFE_NET)
        _, model = write_net(
            tmp_path, "net", CAFFE_NET, {"bn_1": bn_blobs(4), "conv": [np.ones((4, 3, 3, 3)), np.ones(4)]}
        )
        source = 'caffe { prototxt: "net.prototxt" weights: "cut" }'
    spec = tmp_path / "s.prototxt"
    spec.write_text(f"source {{ {source} }}\noutput {{ pytorch {{ }} }}\n")
    data = model.read_bytes()
    for length in sorted({0, 1, 7, 64, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1}):
        (tmp_path / "cut").write_bytes(data[:length])
        code, _, err = _run(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"), "--force")
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (length, err)
        assert not list(tmp_path.glob(".out*"))
