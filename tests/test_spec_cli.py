"""Spec files (prototxt / YAML / JSON), the CLI's error contract, determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import surgery
from surgery.cli import main
from surgery.errors import SpecError
from surgery.spec import load_spec

TESTS = Path(__file__).resolve().parent

EDITS = """
edit { classifier { layer: "classifier.fc2" rename: "head" num_output: 3 } }
edit { lr { match: "features.*" lr_mult: 0 } }
"""


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_prototxt_yaml_and_json_are_the_same_spec(toy_spec, tmp_path: Path, toy_weights: Path) -> None:
    text = load_spec(toy_spec(EDITS)).message
    source = {
        "torch": {"factory": f"{TESTS / 'toy_nets.py'}:ToyCNN", "weights": toy_weights.name},
        "input_shape": [2, 3, 16, 16],
    }
    edits = [
        {"classifier": {"layer": ["classifier.fc2"], "rename": ["head"], "num_output": 3}},
        {"lr": {"match": ["features.*"], "lr_mult": 0}},
    ]
    (tmp_path / "s.json").write_text(json.dumps({"source": source, "seed": 3, "edit": edits}))
    (tmp_path / "s.yaml").write_text(
        f"source:\n  torch: {{factory: '{source['torch']['factory']}', weights: toy.pt}}\n"
        "  input_shape: [2, 3, 16, 16]\nseed: 3\nedit:\n"
        "  - classifier: {layer: [classifier.fc2], rename: [head], num_output: 3}\n"
        "  - lr: {match: ['features.*'], lr_mult: 0}\n"
    )
    assert load_spec(tmp_path / "s.json").message == text
    assert load_spec(tmp_path / "s.yaml").message == text
    a = surgery.apply(tmp_path / "s.yaml", tmp_path / "a")
    b = surgery.apply(toy_spec(EDITS), tmp_path / "b")
    assert _hashes(a.out_dir / "torch") == _hashes(b.out_dir / "torch")


@pytest.mark.parametrize(
    "edits,where,message",
    [
        ('edit { classifier { layer: "classifier.fc2" num_outputs: 3 } }', ":4:", "did you mean 'num_output'"),
        ("edit { lr { lr_mult: abc } }", ":4:", "lr_mult"),
        ('edit { lr { match: "feature.*" lr_mult: 0 } }', ":4:20", "matches no layer"),
        ('\nedit { cut { at: "features.block2_pol" } }', ":5:18", "did you mean 'features.block2_pool'"),
    ],
)
def test_spec_errors_point_at_file_line_col(toy_spec, edits: str, where: str, message: str) -> None:
    path = toy_spec(edits)
    with pytest.raises(SpecError) as error:
        surgery.plan(path)
    text = str(error.value)
    assert f"{path}{where}" in text and message in text


def test_yaml_errors_point_at_the_edit(tmp_path: Path, toy_weights: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"source: {{torch: {{factory: '{TESTS / 'toy_nets.py'}:ToyCNN', weights: toy.pt}}, "
        "input_shape: [2, 3, 16, 16]}\nedit:\n  - lr: {match: [x], lr_mult: 0}\n"
        "  - classifier: {layer: [classifier.fc9], num_output: 2}\n  - cut: {att: y}\n"
    )
    with pytest.raises(SpecError, match=r"bad.yaml:5:5: .*no field named \"att\""):
        surgery.plan(path)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgery.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_apply_writes_folder_and_report(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    run = _cli("apply", str(spec), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "edit 2/2: lr" in run.stderr  # progress
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    head = next(row for row in report["layers"] if row["name"] == "head")
    assert head["output_shape"] == [2, 3] and head["origin"].startswith("weight: filler")
    conv = next(row for row in report["layers"] if row["name"] == "features.block1_conv1")
    assert conv["origin"] == "source" and conv["trainable"] is False and conv["lr_mult"] == 0
    assert sorted(p.name for p in (tmp_path / "out" / "torch").iterdir()) == ["model.py", "weights.pt"]


@pytest.mark.parametrize(
    "case",
    [
        "missing_spec",
        "syntax",
        "unknown_layer",
        "bad_shape",
        "exists",
        "corrupt_weights",
        "missing_weights",
        "no_source",
    ],
)
def test_cli_errors_exit_2_and_write_nothing(case: str, toy_spec, tmp_path: Path, toy_weights: Path, capsys) -> None:
    out = tmp_path / "out"
    spec = toy_spec(EDITS)
    if case == "missing_spec":
        spec = tmp_path / "nope.prototxt"
    elif case == "syntax":
        spec = toy_spec("edit { lr { lr_mult: 0 }")
    elif case == "unknown_layer":
        spec = toy_spec('edit { lr { layer: "classifier.fc7" lr_mult: 0 } }')
    elif case == "bad_shape":
        spec = toy_spec(
            'edit { append { layer { name: "c" type: "Convolution" '
            "convolution_param { num_output: 2 kernel_size: 3 } } } }"
        )
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "corrupt_weights":
        toy_weights.write_bytes(toy_weights.read_bytes()[:500])
    elif case == "missing_weights":
        toy_weights.unlink()
    elif case == "no_source":
        spec.write_text("seed: 1\n")
    inputs = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code = main(["apply", str(spec), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == inputs, "inputs untouched"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert not leftovers
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine" and "--force" in err
    else:
        assert not out.exists()


def test_cli_error_in_a_subprocess_has_no_traceback(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec('edit { classifier { layer: "classifier.fc3" num_output: 2 } }')
    run = _cli("plan", str(spec), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{spec}:4:28: no layer named 'classifier.fc3'" in run.stderr and "did you mean" in run.stderr


@pytest.mark.parametrize(
    "output,where,message",
    [
        ('output { onnx { dynamic_axis: "x:9" } }', ":4:31:", "axis 9 cannot be dynamic"),
        ('output { onnx { dynamic_axis: "x:2" } }', ":4:1:", "fixed along a requested dynamic axis"),
        ('output {\n  onnx { dynamic_axis: "data:2" } }', ":5:24:", "not an input of the net"),
    ],
)
def test_output_errors_point_at_the_output_block(
    output: str, where: str, message: str, toy_spec, tmp_path: Path
) -> None:
    spec = toy_spec(output)
    with pytest.raises(SpecError) as error:
        surgery.apply(spec, tmp_path / "out")
    assert f"{spec}{where} " in str(error.value) and message in str(error.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_force_replaces_and_plan_writes_nothing(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["plan", str(spec), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "spec.prototxt", "toy.pt"]
    assert main(["apply", str(spec), "-o", str(out), "--force", "-q"]) == 2, "not a previous output"
    assert (out / "old.txt").read_text() == "old"
    assert main(["apply", str(spec), "-o", str(out), "--force-any", "-q"]) == 0
    assert not (out / "old.txt").exists() and (out / "report.json").exists()
    (out / "mine.txt").write_text("in a previous output")
    assert main(["apply", str(spec), "-o", str(out), "--force", "-q"]) == 0
    assert not (out / "mine.txt").exists() and (out / "report.json").exists()


def test_inspect_lists_layers(toy_spec, capsys) -> None:
    assert main(["inspect", str(toy_spec(""))]) == 0
    table = capsys.readouterr().out
    assert "features.block2_pool" in table and "2x16x4x4" in table


def test_same_spec_and_seed_give_identical_bytes_across_processes(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS + 'edit { append { layer { name: "prob" type: "Softmax" } } }')
    for name in ("a", "b"):
        run = _cli("apply", str(spec), "-o", str(tmp_path / name), "-q", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    other = toy_spec(EDITS, name="other.prototxt", seed=4)
    surgery.apply(other, tmp_path / "c")
    a = torch.load(tmp_path / "a" / "torch" / "weights.pt")
    c = torch.load(tmp_path / "c" / "torch" / "weights.pt")
    assert not torch.equal(a["head.weight"], c["head.weight"]), "the seed drives new weights"
    assert all(torch.equal(a[k], c[k]) for k in a if not k.startswith("head."))
