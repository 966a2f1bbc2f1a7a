"""The model zoo: every torchvision classifier up to 150M parameters and 20 timm models
go through load -> classifier resize -> emitted torch + ONNX -> verify, or are refused
as listed in tests/zoo_cases.py, never with a traceback.

Random weights, small inputs, one process. Set SURGERY_ZOO_JSON=path to keep the rows;
`python tools/zoo_table.py path` writes them into the README's table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from zoo_cases import Case, run_case, timm_cases, torchvision_cases, video_cases

pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.slow, pytest.mark.zoo]

CASES: list[Case] = torchvision_cases() + video_cases() + timm_cases()
ROWS: dict[str, dict] = {}
#: What has to go through (issue targets): torchvision at least 73 of 75, its video models
#: all 9, timm 18 of 20.
TARGETS = {"torchvision": (73, 75), "torchvision.video": (9, 9), "timm": (18, 20)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_model_goes_through_or_is_refused_as_listed(case: Case) -> None:
    row = run_case(case)
    ROWS[case.id] = row
    assert not row["traceback"], f"{case.id} raised a traceback:\n{row['traceback']}"
    if case.refusal:
        stage, _, reason = case.refusal.partition(": ")
        assert not row["ok"] and row["stage"] == stage and reason in row["error"], row
    else:
        assert row["ok"], f"{case.id} stopped at {row['stage']}: {row['error']}"


def test_zoo_counts_meet_the_targets() -> None:
    if len(ROWS) < len(CASES):
        pytest.skip("runs after the whole zoo (run the file without -k)")
    for family, (needed, total) in TARGETS.items():
        rows = [row for row in ROWS.values() if row["family"] == family]
        assert len(rows) == total, f"{family}: {len(rows)} models tried, {total} expected"
        assert sum(row["ok"] for row in rows) >= needed, family
    target = os.environ.get("SURGERY_ZOO_JSON")
    if target:
        Path(target).write_text(json.dumps(list(ROWS.values()), indent=1, default=str) + "\n")
