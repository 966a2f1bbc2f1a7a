"""The README's commands are the ones that run: CI's script runs its test line verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_lines = [line for line in _readme_commands() if "pytest" in line]
    assert len(test_lines) == 1, test_lines
    command = test_lines[0]
    assert command.startswith("python -m pip install") and " && python -m pytest" in command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_quickstart_installs_then_runs_a_shipped_spec() -> None:
    quick = [line for line in _readme_commands() if "surgery apply" in line and "pip install" in line]
    assert len(quick) == 1
    spec = re.search(r"surgery apply (\S+)", quick[0]).group(1)
    assert (ROOT / spec).is_file()


def test_the_python_api_block_runs_right_after_the_quickstart(tmp_path, monkeypatch, capsys) -> None:
    """The README's Python block, run where a new user runs it: after the Quickstart's
    apply, in the same folder (the spec and the shipped weights at their places)."""
    import shutil

    from surgery.cli import main

    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "digits_parity.prototxt", tmp_path / "specs")
    (tmp_path / "surgery" / "zoo").mkdir(parents=True)
    shutil.copy(ROOT / "surgery" / "zoo" / "digits_cnn.pt", tmp_path / "surgery" / "zoo")
    monkeypatch.chdir(tmp_path)
    quick = next(line for line in _readme_commands() if "surgery apply" in line and "pip install" in line)
    argv = quick.split("surgery ", 1)[1].split()
    assert main(argv) == 0, capsys.readouterr().err
    block = re.search(r"## Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md (Python API)", "exec"), {})  # noqa: S102  (the README's own code)
    assert (tmp_path / "out" / "digits_parity" / "model.onnx").is_file() and (tmp_path / "change.svg").is_file()


def test_api_errors_name_the_api_arguments(tmp_path, capsys) -> None:
    import pytest

    import surgery
    from surgery.cli import main
    from surgery.errors import SurgeryError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    spec = ROOT / "specs" / "digits_parity.prototxt"
    with pytest.raises(SurgeryError) as error:
        surgery.apply(spec, tmp_path / "out")
    assert "force=True" in str(error.value) and "--force" not in str(error.value)
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "force=True" not in err
