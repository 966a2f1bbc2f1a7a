"""A model file cannot make surgery hang, exhaust memory or write to the terminal: constant
folding is bounded in time and in the bytes it allocates, archives are measured before they
inflate, and names are printed escaped. Each case is one located error, exit 2."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import helper
from untrusted_files import (
    constant,
    endless_loop,
    keras_config,
    onnx_model,
    outer_product,
    plain_add,
    run_cli,
    save_onnx,
    write_keras_h5,
)


# ------------------------------------------------------------------ constant folding
def test_a_loop_of_2_to_the_62_iterations_is_refused_at_once(tmp_path: Path, capsys) -> None:
    save_onnx(endless_loop(), tmp_path / "m.onnx")
    started = time.monotonic()
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert time.monotonic() - started < 30
    assert code == 2 and "Loop x1" in err, err


def test_a_broadcast_is_measured_by_its_result_not_its_inputs(tmp_path: Path, capsys, monkeypatch) -> None:
    """Two 4 kB constants whose product is 4 MB: refused under a 1 MB budget."""
    save_onnx(outer_product(1000), tmp_path / "m.onnx")
    monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "1000000")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 2 and "'outer' (Mul)" in err and "4 MB" in err, err


def test_folding_runs_under_a_time_limit(tmp_path: Path, capsys, monkeypatch) -> None:
    """onnx's reference max pooling is Python loops (about a second here for this
    input): under a 0.1 s limit it is refused."""
    import surgery.importers.onnx_fold as fold

    monkeypatch.setattr(fold, "FOLD_SECONDS", 0.1)
    image = np.random.default_rng(0).normal(size=(1, 12, 128, 128)).astype(np.float32)
    nodes = [
        constant("image", image),
        helper.make_node("MaxPool", ["image"], ["pooled"], name="pool", kernel_shape=[3, 3]),
        helper.make_node("ReduceMean", ["pooled"], ["m"], name="mean", axes=[0, 2, 3], keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"], name="add"),
    ]
    save_onnx(onnx_model(nodes, opset=17), tmp_path / "m.onnx")
    started = time.monotonic()
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 2 and "'pool' (MaxPool)" in err and "ran past 0.1 s" in err, err
    assert time.monotonic() - started < 20


# ------------------------------------------------------------------ ONNX headers
def test_two_nodes_writing_one_value_are_refused(tmp_path: Path, capsys) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="first"),
        helper.make_node("Sigmoid", ["x"], ["y"], name="second"),
    ]
    save_onnx(onnx_model(nodes), tmp_path / "m.onnx")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 2 and "'second' (Sigmoid) writes 'y'" in err, err


@pytest.mark.parametrize(("ir", "opset", "words"), [(99, 17, "IR version 99"), (8, 99, "opset 99")])
def test_ir_versions_and_opsets_onnx_does_not_know_are_refused(ir, opset, words, tmp_path: Path, capsys) -> None:
    model = plain_add()
    model.ir_version = ir
    model.opset_import[0].version = opset
    save_onnx(model, tmp_path / "m.onnx")
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 2 and words in err, err


def test_names_are_printed_with_control_characters_escaped(tmp_path: Path, capsys) -> None:
    name = "evil\x1b]0;pwned\x07\x1b[2J\u202eadd"
    save_onnx(onnx_model([helper.make_node("Relu", ["x"], ["y"], name=name)]), tmp_path / "m.onnx")
    code, out, err = run_cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\u202eadd" in out


# ------------------------------------------------------------------- Keras archives
def _archive(path: Path, config: bytes, weights: Path | None = None, metadata: bytes | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", config)
        if metadata is not None:
            archive.writestr("metadata.json", metadata)
        if weights is not None:
            archive.write(weights, "model.weights.h5")
    return path


@pytest.mark.parametrize("member", ["config.json", "metadata.json", "model.weights.h5"])
def test_a_keras_archive_member_is_measured_before_it_inflates(member: str, tmp_path: Path, capsys, monkeypatch):
    """65 MB of JSON white space (or a 16 MB weights file under a 4 MB budget) packed in
    a small zip: refused from the archive's directory, before a byte is inflated."""
    import tracemalloc

    config = json.dumps(keras_config()).encode()
    big = config + b" " * (65 << 20)
    weights = write_keras_h5(tmp_path / "w.h5", units=1024, features=4096)
    if member == "model.weights.h5":
        monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "4000000")
    path = _archive(
        tmp_path / "m.keras",
        big if member == "config.json" else config,
        weights,
        big if member == "metadata.json" else b"{}",
    )
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    code, _, err = run_cli(capsys, "inspect", str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 2 and f"{member} in" in err and "inflates to" in err, err
    assert peak < 20 << 20


def test_a_json_config_nested_past_pythons_stack_is_one_error(tmp_path: Path, capsys) -> None:
    path = _archive(tmp_path / "m.keras", b"[" * 200_000 + b"]" * 200_000)
    code, _, err = run_cli(capsys, "inspect", str(path))
    assert code == 2 and "not valid JSON" in err, err


def _mutants() -> list[tuple[str, object]]:
    """Config values of the wrong type or shape, one place each."""
    return [
        ("units", None),
        ("units", "ten"),
        ("units", -3),
        ("batch_input_shape", [None, "x"]),
        ("batch_input_shape", "x"),
        ("layers", "x"),
        ("layers", [1, 2]),
        ("inbound_nodes", [{}]),
        ("inbound_nodes", [[["nowhere", 0, 0, {}]]]),
        ("activation", ["relu"]),
        ("input_layers", 7),
        ("output_layers", [["dense", 9, 9]]),
    ]


@pytest.mark.parametrize(("key", "value"), _mutants())
def test_a_keras_config_value_of_the_wrong_type_is_one_located_error(key: str, value, tmp_path: Path, capsys) -> None:
    config = keras_config()
    if key in ("layers", "input_layers", "output_layers"):
        config["config"][key] = value
    elif key == "inbound_nodes":
        config["config"]["layers"][1][key] = value
    elif key == "batch_input_shape":
        config["config"]["layers"][0]["config"][key] = value
    else:
        config["config"]["layers"][1]["config"][key] = value
    path = write_keras_h5(tmp_path / "m.h5", config=config)
    spec = tmp_path / "s.prototxt"
    spec.write_text('source { keras { path: "m.h5" } }\n')
    for argv in (["inspect", str(path)], ["apply", "-q", str(spec), "-o", str(tmp_path / "out")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert "m.h5" in err or "dense" in err or "input_1" in err, err
    assert not (tmp_path / "out").exists()


def test_bit_flipped_keras_h5_files_end_cleanly(tmp_path: Path, capsys) -> None:
    """120 single-bit flips across the file: each inspects, or is one error; never a traceback."""
    data = bytearray(write_keras_h5(tmp_path / "clean.h5").read_bytes())
    rng = np.random.default_rng(7)
    spec = tmp_path / "s.prototxt"
    spec.write_text('source { keras { path: "m.h5" } }\n')
    for position in rng.choice(len(data) * 8, size=120, replace=False):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        (tmp_path / "m.h5").write_bytes(bytes(flipped))
        code, _, _ = run_cli(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"), "--force")
        assert code in (0, 2)


# ------------------------------------------------------------------ other tracebacks
def test_a_caffe_split_without_a_bottom_is_named(tmp_path: Path, capsys) -> None:
    net = tmp_path / "n.prototxt"
    net.write_text(
        'name: "n"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }\n'
        'layer { name: "split" type: "Split" top: "a" top: "b" }\n'
    )
    code, _, err = run_cli(capsys, "inspect", str(net))
    assert code == 2 and "Split layer 'split' has bottoms []" in err, err


def test_a_recursive_yaml_alias_is_one_located_error(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("a: &a [*a]\n")
    code, _, err = run_cli(capsys, "plan", "-q", str(spec))
    assert code == 2 and f"{spec}:1:4: an alias refers to a node that contains it" in err, err


def test_fetch_with_an_unusable_torch_home_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a_file"))
    spec = tmp_path / "s.prototxt"
    spec.write_text(
        'source { torch { factory: "torchvision.models:resnet18" pretrained: "IMAGENET1K_V1" } '
        "input_shape: [1, 3, 32, 32] }\n"
    )
    code, _, err = run_cli(capsys, "fetch", str(spec))
    assert code == 2 and "cannot make torch's cache folder" in err and "TORCH_HOME" in err, err


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_where_a_checkpoint_goes_is_named_as_such(kind: str, tmp_path: Path, capsys) -> None:
    import os

    weights = tmp_path / "toy.pt"
    if kind == "fifo":
        os.mkfifo(weights)
    else:
        weights.mkdir()
    spec = tmp_path / "s.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" weights: "toy.pt" } input_shape: [1, 1, 8, 8] }\n'
    )
    code, _, err = run_cli(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and ("a FIFO" if kind == "fifo" else "a folder") in err and "does not exist" not in err, err
    assert f"{spec}:1:" in err


def test_an_input_file_failing_while_outputs_are_written_is_called_a_read(tmp_path: Path) -> None:
    """An OS error on a file outside the output folders (a weight read on first use) is a
    model-file error naming that file, not 'cannot write the outputs'."""
    import errno

    from surgery.errors import ModelFormatError
    from surgery.outputs import _write_error

    out, staging = tmp_path / "out", tmp_path / ".out.staging"
    model = tmp_path / "models" / "m.onnx.data"
    read = _write_error(OSError(errno.EIO, "Input/output error", str(model)), out, staging)
    assert isinstance(read, ModelFormatError) and f"cannot read {str(model)!r}" in str(read)
    written = _write_error(OSError(errno.ENOSPC, "No space left on device", str(staging / "x")), out, staging)
    assert "cannot write the outputs" in str(written) and "free some space" in str(written)


def test_sigterm_stops_the_import_of_a_huge_file(tmp_path: Path) -> None:
    """A 60,000-node file takes seconds to import: SIGTERM during the import ends the run
    with 143 at the next node, not after the whole file (and the report page)."""
    import signal
    import subprocess
    import sys

    count = 60_000
    nodes = [helper.make_node("Relu", ["x"], [f"r{i}"], name=f"r{i}") for i in range(count)]
    nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(count)], ["y"], name="sum"))
    save_onnx(onnx_model(nodes), tmp_path / "m.onnx")
    spec = tmp_path / "s.prototxt"
    spec.write_text('source { onnx { path: "m.onnx" } }\noutput { onnx { } }\n')
    run = subprocess.Popen(
        [sys.executable, "-m", "surgery.cli", "apply", str(spec), "-o", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    line = run.stderr.readline()  # the progress line comes once the CLI handles signals
    assert "loading the source model" in line, line
    run.send_signal(signal.SIGTERM)
    rest = run.stderr.read()
    assert run.wait(timeout=120) == 143, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert "writing" not in rest  # stopped in the import, before any output
    assert not (tmp_path / "out").exists()
