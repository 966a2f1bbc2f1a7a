"""A model file reads only itself: every path it names (HDF5 external storage, virtual
datasets and links, ONNX external data of initializers and Constants, a Caffe mean_file)
is refused outside the model's folder, and no FIFO, device or folder is ever opened as a
file. Each case ends in one located error, exit 2, no traceback, nothing written, and the
host file's bytes in no output."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from caffe_nets import write_net
from onnx import TensorProto
from untrusted_files import (
    SECRET,
    constant_add,
    external_tensor,
    initializer_add,
    plain_add,
    run_cli,
    save_onnx,
    write_keras_h5,
    write_secret,
    write_secret_h5,
)

from surgery.spec.schema import caffe_class


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code, _, err = run_cli(capsys, *argv)
    return code, err


def _spec(folder: Path, source: str) -> Path:
    spec = folder / "spec.prototxt"
    spec.write_text(f"source {{ {source} }}\n")
    return spec


def _refused_everywhere(capsys, tmp_path: Path, model: Path, source: str, words: str) -> None:
    """inspect, plan and apply all end in exit 2 naming ``words``; apply writes nothing."""
    spec = _spec(model.parent, source)
    out = tmp_path / "out"
    for argv in (["inspect", str(model)], ["plan", "-q", str(spec)], ["apply", "-q", str(spec), "-o", str(out)]):
        code, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert words in err, (argv, err)
    assert not out.exists()


# ------------------------------------------------------------------- HDF5 (Keras)
@pytest.mark.parametrize("kind", ["external", "link", "vds"])
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_an_hdf5_file_that_reads_another_file_is_refused(kind: str, where: str, tmp_path: Path, capsys, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    secret = write_secret(tmp_path / "secret.bin") if kind == "external" else write_secret_h5(tmp_path / "secret.h5")
    monkeypatch.chdir(tmp_path)  # a relative name resolves against the current folder in h5py
    target = str(secret) if where == "absolute" else secret.name
    model = write_keras_h5(models / "m.h5", kind, target)
    words = {"external": "stored in an external file", "link": "external link", "vds": "virtual dataset"}[kind]
    _refused_everywhere(capsys, tmp_path, model, 'keras { path: "m.h5" }', words)


def test_a_compressed_hdf5_dataset_is_checked_against_the_budget_before_it_inflates(tmp_path, capsys, monkeypatch):
    model = write_keras_h5(tmp_path / "m.h5", "gzip", units=1024, features=4096)  # 16 MB of zeros in a few kB
    assert model.stat().st_size < 200_000
    monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "4000000")
    spec = _spec(tmp_path, 'keras { path: "m.h5" }')
    code, err = _cli(capsys, "plan", "-q", str(spec))  # shapes only: fine
    assert code == 0, err
    code, err = _cli(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and "reading the Keras variable" in err and "16.8 MB" in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("holder", [constant_add, initializer_add])
@pytest.mark.parametrize(
    ("location", "words"),
    [
        ("secret.bin", "missing from"),  # beside the user's current folder, not the model
        ("../secret.bin", "outside the model's folder"),
        ("ABSOLUTE", "absolute path"),
        ("", "not a usable file name"),
        ("a\0b", "not a usable file name"),
        ("x" * 5000, "not a usable file name"),
        ("loop", "cannot be resolved"),
        ("fifo", "FIFO"),
        ("sub", "a folder"),
    ],
)
def test_onnx_external_data_outside_the_model_or_not_a_file_is_refused(
    holder, location: str, words: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_secret(tmp_path / "secret.bin")
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", models / "loop")
    os.mkfifo(models / "fifo")
    (models / "sub").mkdir()
    location = str(tmp_path / "secret.bin") if location == "ABSOLUTE" else location
    model = save_onnx(holder(external_tensor("w", {"location": location})), models / "m.onnx")
    started = time.monotonic()
    _refused_everywhere(capsys, tmp_path, model, 'onnx { path: "m.onnx" }', words)
    assert time.monotonic() - started < 60  # a FIFO never blocks


@pytest.mark.parametrize("holder", [constant_add, initializer_add])
@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ({"location": "w.bin", "offset": "-8"}, "offset '-8'"),
        ({"location": "w.bin", "offset": "abc"}, "offset 'abc'"),
        ({"location": "w.bin", "length": "1e3"}, "length '1e3'"),
        ({"offset": "0"}, "not a usable file name"),
        ({"location": "w.bin", "offset": "40"}, "truncated or corrupt"),
    ],
)
def test_onnx_external_data_entries_are_checked(holder, entries: dict, words: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "w.bin").write_bytes(np.ones(12, np.float32).tobytes())
    model = save_onnx(holder(external_tensor("w", entries)), tmp_path / "m.onnx")
    code, err = _cli(capsys, "apply", "-q", str(_spec(tmp_path, 'onnx { path: "m.onnx" }')), "-o", str(tmp_path / "o"))
    assert code == 2 and words in err, err
    assert not (tmp_path / "o").exists()
    del model


def test_onnx_external_data_inside_the_folder_is_read_for_constants_too(tmp_path: Path, capsys) -> None:
    """The rule refuses only what is outside: a Constant's external data beside the model
    is read, computes the right numbers and is listed among the report's inputs."""
    import json

    import onnxruntime as ort

    sub = tmp_path / "data"
    sub.mkdir()
    (sub / "c.bin").write_bytes(b"\0" * 8 + SECRET.tobytes())
    tensor = external_tensor("c", {"location": "data/c.bin", "offset": "8", "length": str(SECRET.nbytes)})
    model = save_onnx(constant_add(tensor), tmp_path / "m.onnx")
    spec = _spec(tmp_path, 'onnx { path: "m.onnx" }')
    code, err = _cli(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 0, err
    x = np.random.default_rng(0).normal(size=(1, 12)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + SECRET)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(entry["path"].endswith("c.bin") for entry in report["files"]["inputs"]), report["files"]
    del model


def test_a_typed_onnx_tensor_shorter_than_its_dims_is_refused(tmp_path: Path, capsys) -> None:
    for holder, name in ((constant_add, "c"), (initializer_add, "w")):
        model = holder(TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[12], float_data=[1.0] * 5))
        save_onnx(model, tmp_path / "m.onnx")
        code, err = _cli(capsys, "inspect", str(tmp_path / "m.onnx"))
        assert code == 2 and "stores 5 values or bytes for shape [12]" in err, err


# ------------------------------------------------------------------------ Caffe
CAFFE = """name: "n"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 4 } data_param { source: "x" batch_size: 1 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 4 mean_file: "%s" } data_param { source: "x" batch_size: 1 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""


def _mean_blob(path: Path) -> Path:
    blob = caffe_class("BlobProto")()
    blob.shape.dim.extend([1, 3, 2, 2])
    blob.data.extend(np.arange(12, dtype=np.float32).tolist())
    path.write_bytes(blob.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["absolute", "parent", "fifo", "device", "folder"])
def test_a_caffe_mean_file_outside_the_folder_or_not_a_file_is_refused(where: str, tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    outside = _mean_blob(tmp_path / "mean.binaryproto")
    os.mkfifo(models / "fifo")
    (models / "folder").mkdir()
    name = {
        "absolute": str(outside),
        "parent": "../mean.binaryproto",
        "fifo": "fifo",
        "device": "/dev/zero",
        "folder": "folder",
    }[where]
    write_net(models, "n", CAFFE % name, {})
    words = {"absolute": "absolute path", "parent": "outside", "fifo": "FIFO", "device": "absolute path"}
    words["folder"] = "a folder"
    model = models / "n.prototxt"
    started = time.monotonic()
    _refused_everywhere(capsys, tmp_path, model, 'caffe { prototxt: "n.prototxt" }', words[where])
    assert time.monotonic() - started < 60


def test_a_caffe_mean_file_beside_the_prototxt_is_read_and_listed_as_an_input(tmp_path: Path, capsys) -> None:
    import json

    _mean_blob(tmp_path / "mean.binaryproto")
    write_net(tmp_path, "n", CAFFE % "mean.binaryproto", {})
    spec = _spec(tmp_path, 'caffe { prototxt: "n.prototxt" }')
    code, err = _cli(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(entry["path"].endswith("mean.binaryproto") for entry in report["files"]["inputs"]), report["files"]


# --------------------------------------------------- FIFOs and devices the user names
@pytest.mark.parametrize("what", ["model", "spec", "device"])
def test_a_fifo_or_device_named_as_a_model_or_spec_is_refused_without_blocking(what: str, tmp_path: Path, capsys):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    writer_done = threading.Event()

    def unblock() -> None:  # if surgery opened the FIFO for reading, this lets the test end
        if not writer_done.wait(20):
            with open(fifo, "wb"):
                pass

    helper_thread = threading.Thread(target=unblock, daemon=True)
    helper_thread.start()
    started = time.monotonic()
    if what == "model":
        argv = ["inspect", str(fifo)]
    elif what == "spec":
        argv = ["plan", "-q", str(fifo)]
    else:
        argv = ["plan", "-q", "/dev/zero"]
    code, err = _cli(capsys, *argv)
    writer_done.set()
    assert time.monotonic() - started < 15, "blocked on the FIFO"
    assert code == 2 and ("FIFO" in err or "device" in err), err


def test_an_ordinary_onnx_file_still_loads(tmp_path: Path, capsys) -> None:
    save_onnx(plain_add(), tmp_path / "m.onnx")
    code, err = _cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 0, err
