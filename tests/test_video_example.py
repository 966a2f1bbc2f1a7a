"""The video example end to end on a few clips (the pipeline, not the accuracy)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import video_digits


def test_paths_differ_only_in_order_for_each_pair() -> None:
    for first in range(0, 10, 2):
        forward, backward = video_digits.path(first), video_digits.path(first + 1)
        assert sorted(map(tuple, forward)) == sorted(map(tuple, backward))  # same positions...
        assert not np.array_equal(forward, backward)  # ...in another order


def test_example_runs_end_to_end_on_a_few_clips() -> None:
    results = video_digits.run(per_class=2, test_per_class=1, epochs=1, frames=6)
    assert set(results) == {"lstm", "frame_average", "seconds"}
    assert 0.0 <= results["lstm"] <= 1.0 and 0.0 <= results["frame_average"] <= 1.0


def test_the_video_files_example_runs_end_to_end_on_a_few_files(tmp_path: Path) -> None:
    pytest.importorskip("av")
    import video_digits_files

    results = video_digits_files.run(per_class=2, test_per_class=1, epochs=2, work=tmp_path)
    assert results["videos"] == 33 and results["ranks_agree"]
    assert 0.0 <= results["accuracy"] <= 1.0 and 0 <= results["stream_class"] < 11
    assert len(list((tmp_path / "features" / "train").glob("*/*.npy"))) == 22
    assert (tmp_path / "features" / "test" / "manifest.json").is_file()
