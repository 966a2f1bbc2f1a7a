"""Every spec in specs/, mutated (typos, dropped / duplicated / garbage lines, truncation,
wrong types, huge / zero / negative numbers): each mutant plans (a sample also applies)
to exit 0 or to exit 2 with one error at the mutant's file:line:col; never a traceback.

A seeded, bounded number of mutants per spec keeps this in CI's budget;
``python tools/fuzz_specs.py -n 500`` runs many more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from fuzz_specs import Outcome, fuzz, mirror, mutate, spec_files  # noqa: E402

MUTANTS_PER_SPEC = 24
APPLY_EVERY = 12  # two of each spec's mutants go through apply too
SPECS = spec_files()


def _needs(spec: Path) -> None:
    """What test_specs needs for a spec: torchvision, onnxruntime, and the generated Keras
    file (made once, with Keras, when missing; skipped without Keras)."""
    from test_specs import _needs as needs

    needs(spec)


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_mutants_of_every_spec_end_cleanly(spec: Path) -> None:
    _needs(spec)
    with mirror() as folder:
        failures = fuzz(MUTANTS_PER_SPEC, seed=0, apply_every=APPLY_EVERY, folder=folder, specs=[spec])
        report = [
            f"{command} {mutant.name}: exit {outcome.code}\n{mutant.read_text()[:2000]}\n"
            f"{outcome.trace or outcome.stderr}"
            for mutant, command, outcome in failures
        ]
    assert not failures, "\n\n".join(report)


def test_mutants_are_seeded_and_differ_from_the_spec() -> None:
    import random

    text = SPECS[0].read_text()
    first = [mutate(text, random.Random(5)) for _ in range(3)]
    assert first == [mutate(text, random.Random(5)) for _ in range(3)]
    mutants = [mutate(text, random.Random(seed)) for seed in range(40)]
    assert sum(m != text for m in mutants) >= 35


def test_a_clean_outcome_needs_the_mutants_location() -> None:
    assert Outcome(0, "").clean("s.prototxt")
    assert Outcome(2, "error: s.prototxt:4:7: no layer named 'x'\n  fix: ...").clean("s.prototxt")
    assert not Outcome(2, "error: s.prototxt: the spec names no source model").clean("s.prototxt")
    assert not Outcome(2, "error: s.prototxt:1:1: a\nerror: s.prototxt:2:1: b").clean("s.prototxt")
    assert not Outcome(None, "", "Traceback ...").clean("s.prototxt")
    assert not Outcome(1, "").clean("s.prototxt")


def test_mutants_are_written_outside_specs() -> None:
    before = sorted(p.name for p in (ROOT / "specs").iterdir())
    with mirror() as folder:
        fuzz(2, seed=1, apply_every=0, folder=folder, specs=SPECS[:1])
        assert list((folder / "specs").iterdir()) and folder.resolve() != ROOT
    assert sorted(p.name for p in (ROOT / "specs").iterdir()) == before


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_plans_and_inspects(spec: Path, capsys) -> None:
    """The unmutated specs: plan (which reads no weights, a FIT collapse included) and
    inspect both succeed."""
    _needs(spec)
    from surgery.cli import main

    assert main(["plan", "-q", str(spec)]) == 0, capsys.readouterr().err
    assert main(["inspect", str(spec)]) == 0, capsys.readouterr().err


def test_inspect_of_a_spec_locates_its_source_errors(tmp_path: Path, capsys) -> None:
    from surgery.cli import main

    spec = tmp_path / "s.prototxt"
    spec.write_text('seed: 1\nsource { torch { factory: "surgery.zoo:NoSuchNet" } input_shape: [1, 1, 8, 8] }\n')
    assert main(["inspect", str(spec)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {spec}:2:27: 'surgery.zoo' has no attribute 'NoSuchNet'")
