"""The IR's records: Layer takes its fields past name and type by keyword, and a net's
skeleton keeps every field of every layer."""

from __future__ import annotations

import pytest

from surgery.ir import Layer, Net


def test_layer_fields_past_type_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Layer("relu", "ReLU", ["x"], ["y"])  # type: ignore[misc]


def test_skeleton_keeps_each_field() -> None:
    net = Net("n")
    net.add_layer(Layer("data", "Input", outputs=["data"], params={"shape": (1, 3, 8, 8)}))
    net.add_layer(
        Layer("relu", "ReLU", inputs=["data"], outputs=["relu"], phase="train", per_frame=True, extra={"note": 1})
    )
    twin = net.skeleton().layer("relu")
    assert (twin.phase, twin.per_frame, twin.extra) == ("train", True, {"note": 1})
