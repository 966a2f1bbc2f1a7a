"""Every spec in specs/ applies, and the README's quickstart command works."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import surgery
from surgery import output_folder
from surgery.api import verify
from surgery.spec import load_spec
from surgery.verify import format_verify

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p for p in (ROOT / "specs").iterdir() if p.suffix in (".prototxt", ".yaml", ".yml", ".json"))


def _needs(spec: Path) -> None:
    text = spec.read_text()
    if "torchvision" in text:
        pytest.importorskip("torchvision")
    if re.search(r"\bonnx\s*[{:]", text):
        pytest.importorskip("onnxruntime")


def test_specs_read_only_files_the_repository_ships() -> None:
    """Every file a shipped spec reads is in the repository (not generated, not ignored),
    so each spec plans, draws and applies on a fresh clone."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    for spec in SPECS:
        for path in output_folder.input_files(load_spec(spec)):
            relative = path.resolve().relative_to(ROOT)
            if relative.parts[0] == "surgery" and relative.suffix == ".py":
                continue  # a factory's module: the package itself
            ignored = subprocess.run(["git", "check-ignore", "-q", str(relative)], cwd=ROOT)
            assert ignored.returncode == 1, f"{spec.name} reads {relative}, which git ignores"


def _expected_files(spec: Path) -> set[str]:
    """What the spec's output block asks for (both torch and ONNX without one), the
    report and the marker that says the folder is surgery's."""
    message = load_spec(spec).message
    output, default = message.output, not message.HasField("output")
    files = {"report.json", "report.html", ".surgery-output"}
    if default or output.HasField("pytorch"):
        files |= {f"{output.pytorch.path}/model.py", f"{output.pytorch.path}/weights.pt"}
    if default or output.HasField("onnx"):
        files.add(output.onnx.path)
    if output.HasField("caffe"):
        files |= {output.caffe.prototxt, output.caffe.weights}
    if output.HasField("step"):
        files |= {output.step.onnx, f"{output.step.pytorch}/model.py", f"{output.step.pytorch}/weights.pt"}
    return files


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_spec_applies_and_verifies(spec: Path, tmp_path: Path) -> None:
    """apply writes what the spec asks for; verify finds emitted torch, onnxruntime and the
    source's untouched paths equal within 1e-5 (float32)."""
    _needs(spec)
    result = surgery.apply(spec, tmp_path / "out")
    written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == _expected_files(spec)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["layers"], "the report lists the layers"
    assert {"name", "type", "output_shape", "params", "origin", "lr_mult", "decay_mult", "trainable"} <= set(
        report["layers"][0]
    )
    assert result.report.rows == report["layers"]
    recorded = {entry["path"]: entry for entry in report["files"]["outputs"]}
    assert set(recorded) == written - {"report.json", ".surgery-output"}
    for name, entry in recorded.items():
        data = (tmp_path / "out" / name).read_bytes()
        assert entry == {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert report["files"]["inputs"][0]["path"] == spec.name
    pytest.importorskip("onnxruntime")
    verified = verify(spec, atol=1e-5)
    assert verified.ok, format_verify(verified)
    assert any(c.what == "onnx vs torch" for c in verified.comparisons)


def test_readme_quickstart_command(tmp_path: Path) -> None:
    """The README's install-and-run command, minus the install (this process has it)."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"pip install -e \"\.\[ort\]\" && (surgery apply \S+ -o \S+)", readme).group(1)
    parts = command.split()
    out = tmp_path / "quickstart"
    parts[-1] = str(out)
    run = subprocess.run([sys.executable, "-m", "surgery.cli", *parts[1:]], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "classifier.parity" in run.stdout
    spec = importlib.util.spec_from_file_location("quickstart_model", out / "torch" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.load().eval()
    import torch

    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 2)


def test_readme_test_command_is_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"the line CI runs, verbatim\):\s*```sh\s*(.+?)\s*```", readme, re.S).group(1).strip()
    assert command in ci.splitlines(), f"{command!r} must be the last step of .ci/run"
