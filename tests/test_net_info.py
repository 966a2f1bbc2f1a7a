"""What a net carries besides its layers (NetInfo) travels whole: a failed edit leaves all
of it as it was, a copy shares none of it, and the split head keeps the solver."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import surgery
from surgery.cli import main
from surgery.ir.info import NetInfo
from surgery.zoo import digits_cnn

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_of_the_info_is_restored_when_an_edit_fails() -> None:
    net = surgery.load(digits_cnn(), (1, 1, 8, 8))
    before = net.info.copy()
    with pytest.raises(RuntimeError), net.transaction():
        net.class_names["classifier.fc2"] = ["a"] * 10
        net.solver = {"type": "SGD"}
        net.loss_weights["classifier.fc2"] = 0.5
        net.pretrained = {"name": "x"}
        net.module_refusals["features"] = "called twice"
        raise RuntimeError("the edit failed")
    assert net.info == before


def test_a_failed_keep_classes_leaves_no_class_names_behind() -> None:
    """keep_classes sets the class names of the first layer (row 20 of fc1's 64), then the
    second layer of the same edit fails (fc2 has 10 rows): the whole edit is undone, its
    class names too (they stayed behind before)."""
    net = surgery.load(digits_cnn(), (1, 1, 8, 8))
    with pytest.raises(surgery.SpecError, match=r"class 20 is not a row of 'classifier\.fc2'"):
        surgery.classifier(net, ["classifier.fc1", "classifier.fc2"], keep_classes=["20", "2"])
    assert net.class_names == {}


def test_a_copy_shares_nothing_mutable() -> None:
    info = NetInfo(class_names={"fc": ["a"]}, solver={"type": "SGD"}, preprocess=object())
    twin = info.copy()
    twin.class_names["fc"].append("b")
    twin.solver["type"] = "Adam"  # type: ignore[index]
    assert info.class_names == {"fc": ["a"]} and info.solver == {"type": "SGD"}
    assert twin.preprocess is info.preprocess  # immutable: shared


def test_the_split_head_keeps_the_solver(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        (ROOT / "specs" / "digits_video.prototxt")
        .read_text()
        .replace("../surgery/zoo/digits_cnn.pt", str(ROOT / "surgery" / "zoo" / "digits_cnn.pt"))
        .replace("output { pytorch { } onnx { } step { } }", "output { split { } }")
        + 'solver { caffe_fields { base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 100 momentum: 0.9 } }\n'
    )
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    loaded = importlib.util.spec_from_file_location("head_model", tmp_path / "out" / "head" / "model.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    head = module.load()
    assert head.SOLVER is not None and head.SOLVER["base_lr"] == pytest.approx(0.01)  # it was None
