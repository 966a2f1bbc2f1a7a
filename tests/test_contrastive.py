"""A train-only projection head (Caffe's include { phase: TRAIN }) appended beside an
embedding: in the train-mode model, out of the deploy model and ONNX; the contrastive
example trains it."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
import torch

import surgery
from surgery.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_contrastive.prototxt"


def test_the_projection_head_trains_and_leaves_at_deploy(tmp_path: Path) -> None:
    result = surgery.apply(SPEC, tmp_path / "out")
    model = surgery.load_torch_folder(result.out_dir / "torch")
    assert model.OUTPUTS == {"train": ["embed", "proj.fc2"], "eval": ["embed"]}
    x = torch.rand(3, 1, 8, 8)
    outputs = model.train()(x)
    assert set(outputs) == {"embed", "proj.fc2"} and outputs["proj.fc2"].shape == (3, 32)
    assert model.eval()(x).shape == (3, 32)
    graph = onnx.load(str(result.out_dir / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["embed"]
    assert not any(node.name.startswith("proj.") for node in graph.node)
    rows = {row["name"]: row for row in result.report.rows}
    assert rows["proj.fc1"]["phase"] == "train" and rows["proj.relu"]["phase"] == "train"
    assert rows["embed"]["phase"] is None


@pytest.mark.parametrize("rule", ["include { phase: TEST }", "exclude { phase: TRAIN }"])
def test_a_new_layer_is_train_only_or_nothing(rule: str, toy_spec) -> None:
    spec = toy_spec(f'edit {{ append {{ layer {{ name: "extra" type: "ReLU" {rule} }} }} }}')
    with pytest.raises(SpecError, match="train-only") as caught:
        surgery.plan(spec)
    assert caught.value.location.startswith(f"{spec}:")


def test_the_contrastive_example_makes_the_embedding_shift_invariant() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import contrastive_digits
    finally:
        sys.path.pop(0)
    (_, shifted_before), (clean_after, shifted_after) = contrastive_digits.main(epochs=4)
    assert shifted_after > shifted_before + 0.1, "NT-Xent on shifted views makes the embedding shift-invariant"
    assert clean_after > 0.9
