"""Front-door edges a new user meets: --version, plan -q, a budget typo, inspect of a
factory without a shape, the bench's and the example's own command lines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from surgery.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_parity.prototxt"


def test_version(capsys) -> None:
    from importlib.metadata import version

    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out.strip() == f"surgery {version('surgery-nets')}"


def test_plan_quiet_prints_only_the_summary(capsys) -> None:
    assert main(["plan", "-q", str(SPEC)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].endswith("outputs: classifier.parity") and "layers" in out[0]
    assert main(["plan", str(SPEC)]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 10


def test_a_memory_budget_that_is_not_a_size_is_an_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "abc")
    assert main(["plan", "-q", str(SPEC)]) == 2
    err = capsys.readouterr().err
    assert "SURGERY_MEMORY_BUDGET='abc' is not a number of bytes" in err and "Traceback" not in err
    from surgery.ir.budget import memory_budget

    for text, size in (("500M", 500 * 10**6), ("8G", 8 * 10**9), ("123", 123)):
        monkeypatch.setenv("SURGERY_MEMORY_BUDGET", text)
        assert memory_budget() == size


def test_inspect_of_a_factory_without_a_shape_names_the_option(capsys) -> None:
    assert main(["inspect", "surgery.zoo:DigitsCNN"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape N,C,H,W" in err and "224" not in err and "input_shape:" not in err, err


def test_bench_run_help_runs_no_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--only" in done.stdout and "==" not in done.stdout


def test_the_training_example_writes_into_the_checkout() -> None:
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "examples" / "train_digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CHECKOUT_WEIGHTS == ROOT / "surgery" / "zoo" / "digits_cnn.pt"
