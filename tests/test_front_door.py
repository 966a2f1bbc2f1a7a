"""The front door does not wait for torch: `import surgery`, `surgery --help` and
`surgery solver` run without importing it (each checked in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLVER = """base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 100 momentum: 0.9 max_iter: 300"""


def _torch_imported(code: str) -> bool:
    script = f"import sys\n{code}\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1] == "True"


def test_import_surgery_loads_torch_only_when_a_name_needs_it() -> None:
    assert not _torch_imported("import surgery; surgery.SpecError; dir(surgery)")
    assert _torch_imported("import surgery; surgery.plan")
    assert _torch_imported("from surgery import Net")


@pytest.mark.parametrize("argv", [["--help"], ["solver", "SOLVER", "--at", "0,150"], ["features", "--help"]])
def test_cli_commands_that_do_no_torch_work_do_not_import_it(argv: list[str], tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER)
    args = [str(solver) if a == "SOLVER" else a for a in argv]
    code = f"from surgery.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
    assert not _torch_imported(code)


def test_a_submodule_import_does_not_hide_a_public_name() -> None:
    # surgery.report is both a function (the API) and a submodule (the Report class's home)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import surgery, surgery.report\n"
        "from surgery.report import Report\n"
        "import types\n"
        "assert isinstance(surgery.report, types.FunctionType), surgery.report\n"
        "assert surgery.Report is Report\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
