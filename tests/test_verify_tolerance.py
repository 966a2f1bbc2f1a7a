"""verify's two rules: allclose per element, or the difference next to the output's scale."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.verify import Tolerance, VerifyResult, compare, format_verify

TOL = Tolerance(atol=1e-5, rtol=1e-4, scale_rtol=1e-5)


def _compare(ours, reference, tolerance=TOL):
    return compare("onnx vs torch", "out", np.asarray(ours, np.float32), np.asarray(reference, np.float32), tolerance)


def test_identical_and_within_allclose() -> None:
    c = _compare([1.0, 2.0, -3.0], [1.0, 2.0, -3.0])
    assert (c.max_abs, c.max_rel, c.allclose_ratio, c.ok) == (0.0, 0.0, 0.0, True)
    c = _compare([1000.05, 0.0], [1000.0, 0.0])  # 0.05 <= 1e-5 + 1e-4 * 1000
    assert c.allclose_ok and c.ok and c.max_abs == pytest.approx(0.05, rel=1e-3)


def test_huge_outputs_pass_by_scale_when_allclose_fails() -> None:
    """A random-init net: outputs near 1e11, one element near zero off by 9e4 (float32 rounding of the sum)."""
    reference = np.array([1.7e11, -9.1e10, 3.0], np.float32)
    ours = reference + np.array([0.0, 0.0, 9.0e4], np.float32)
    c = _compare(ours, reference)
    assert not c.allclose_ok and c.scale_ok and c.ok
    assert c.allclose_ratio == pytest.approx(9.0e4 / (1e-5 + 1e-4 * 3.0), rel=1e-3)
    assert c.max_rel == pytest.approx(9.0e4 / 1.7e11, rel=1e-3)
    assert "ok (scale; allclose fails" in format_verify(VerifyResult("CPUExecutionProvider", [c]))


def test_failing_both_rules_says_so() -> None:
    c = _compare([1.0, 2.1], [1.0, 2.0])
    assert not c.allclose_ok and not c.scale_ok and not c.ok
    text = format_verify(VerifyResult("CPUExecutionProvider", [c]))
    assert "FAIL: allclose (|a-b| <= 1e-05 + 0.0001*|b|) fails, worst element" in text
    assert "scale (max abs <= 1e-05 * max |b|) fails, max rel 0.05" in text
    assert text.endswith("verification FAILED")


def test_shape_mismatch_and_nan_fail() -> None:
    assert not _compare([1.0, 2.0], [[1.0, 2.0]]).ok
    assert not _compare([np.nan, 1.0], [0.0, 1.0]).ok
    assert _compare([], []).ok
