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
