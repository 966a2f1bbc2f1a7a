"""Pretrained weights by name: a test-made torchvision weights enum whose file the test
places in its own TORCH_HOME (or serves from a file:// URL for `surgery fetch`); no
network, no download of anything real."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import surgery
from surgery.errors import ModelFormatError, SpecError

pytest.importorskip("torchvision")

MODULE = """
from functools import partial
from typing import Optional

from torch import nn
from torchvision.models import Weights, WeightsEnum
from torchvision.transforms._presets import ImageClassification


class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class TinyNet_Weights(WeightsEnum):
    V1 = Weights(
        url="{url}",
        transforms=partial(ImageClassification, crop_size=8, resize_size=10),
        meta={{"categories": ["apple", "banana", "cherry"]}},
    )
    DEFAULT = V1


def tinynet(*, weights: Optional[TinyNet_Weights] = None, **kwargs):
    if weights is not None:
        raise AssertionError("surgery must never ask the factory to load or download weights")
    return TinyNet(**kwargs)
"""


class Fixture:
    """A weights file served from ``remote`` (file://), the cache at ``home``, a spec writer."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path
        self.home = tmp_path / "torch_home"
        monkeypatch.setenv("TORCH_HOME", str(self.home))
        torch.manual_seed(0)
        sys.path.insert(0, str(tmp_path))
        self.state = {
            "conv.weight": torch.randn(4, 3, 3, 3),
            "conv.bias": torch.randn(4),
            "fc.weight": torch.randn(3, 4),
            "fc.bias": torch.randn(3),
        }
        staged = tmp_path / "staged.pth"
        torch.save(self.state, staged)
        prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
        remote = tmp_path / "server"
        remote.mkdir()
        self.remote_file = remote / f"tinynet-{prefix}.pth"
        staged.rename(self.remote_file)
        self.cached = self.home / "hub" / "checkpoints" / self.remote_file.name
        (tmp_path / "tiny_weights.py").write_text(MODULE.format(url=self.remote_file.as_uri()))

    def place(self) -> Path:
        self.cached.parent.mkdir(parents=True, exist_ok=True)
        self.cached.write_bytes(self.remote_file.read_bytes())
        return self.cached

    def spec(self, torch_fields: str, name: str = "spec.prototxt") -> Path:
        path = self.root / name
        path.write_text(
            f'source {{ torch {{ factory: "tiny_weights.py:tinynet" {torch_fields} }} input_shape: [1, 3, 8, 8] }}\n'
        )
        return path


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fixture = Fixture(tmp_path, monkeypatch)
    yield fixture
    sys.path.remove(str(tmp_path))


FORMS = ['pretrained: "V1"', 'pretrained: "DEFAULT"', 'pretrained: "TinyNet_Weights.V1"',
         """kwargs: '{"weights": "V1"}'"""]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_plan_resolves_the_name_and_reads_no_byte_of_the_file(form: str, tiny: Fixture) -> None:
    tiny.cached.parent.mkdir(parents=True)
    tiny.cached.write_bytes(b"\0" * 4096)  # garbage under the right name: plan must not read it
    plan = surgery.plan(tiny.spec(form))
    assert plan.net.pretrained["name"] == "TinyNet_Weights.V1"
    assert plan.net.pretrained["file"] == str(tiny.cached)
    with pytest.raises(ModelFormatError, match=r"damaged or not TinyNet_Weights\.V1"):
        surgery.apply(tiny.spec(form), tiny.root / "out")
    assert not (tiny.root / "out").exists()


def test_apply_reads_the_cache_checks_the_hash_and_records_the_preprocessing(tiny: Fixture) -> None:
    tiny.place()
    result = surgery.apply(tiny.spec('pretrained: "DEFAULT"'), tiny.root / "out")
    model = surgery.load_torch_folder(result.out_dir / "torch")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny.state.items())
    report = json.loads((result.out_dir / "report.json").read_text())["pretrained"]
    assert report["sha256"] == hashlib.sha256(tiny.cached.read_bytes()).hexdigest()
    assert report["url"] == tiny.remote_file.as_uri() and report["categories"] == ["apple", "banana", "cherry"]
    assert report["preprocessing"]["crop_size"] == [8] and report["preprocessing"]["resize_size"] == [10]
    # the weights' transform becomes the net's preprocessing, in pixel units (ToTensor's 1/255 folded in)
    block = json.loads((result.out_dir / "report.json").read_text())["preprocess"]
    assert block["resize"] == [10] and block["crop"] == [8] and block["channel_order"] == "RGB"
    assert block["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert block["std"] == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255]) and block["scale"] == 1.0
    assert block["origin"] == {"*": "torchvision TinyNet_Weights.V1"}
    assert model.PREPROCESSING == block
    props = {p.key: p.value for p in onnx.load(str(result.out_dir / "model.onnx")).metadata_props}
    assert props["surgery.pretrained"] == "TinyNet_Weights.V1"
    assert json.loads(props["surgery.preprocessing"]) == block


def test_a_missing_file_says_where_to_put_it_and_nothing_downloads(tiny: Fixture) -> None:
    """plan, inspect and draw read no weights: they work before the download and say which
    file is missing and how to get it; apply is where the missing file is an error."""
    spec = tiny.spec('pretrained: "V1"')
    for argv in (["plan", "-q", str(spec)], ["inspect", str(spec)], ["draw", str(spec), "-o", "c.svg"]):
        run = subprocess.run(
            [sys.executable, "-m", "surgery.cli", *argv], capture_output=True, text=True, cwd=tiny.root
        )
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        assert (
            "note: pretrained weights" in run.stderr
            and str(tiny.cached) in run.stderr
            and "surgery fetch" in run.stderr
        )
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "apply", "-q", str(spec), "-o", "out"],
        capture_output=True,
        text=True,
        cwd=tiny.root,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(tiny.cached) in run.stderr and tiny.remote_file.as_uri() in run.stderr and "surgery fetch" in run.stderr
    assert not tiny.cached.exists() and not (tiny.root / "out").exists()


def test_fetch_downloads_with_the_hash_check_then_apply_works(tiny: Fixture) -> None:
    spec = tiny.spec('pretrained: "V1"')
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "fetch", str(spec), "-q"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "fetched TinyNet_Weights.V1" in run.stdout and tiny.cached.read_bytes() == tiny.remote_file.read_bytes()
    assert "in the cache already" in surgery.runner.fetch(spec, progress=False)
    surgery.apply(spec, tiny.root / "out")


def test_fetch_refuses_a_download_whose_hash_does_not_match(tiny: Fixture) -> None:
    tiny.remote_file.write_bytes(b"not the weights")
    with pytest.raises(ModelFormatError, match=r"invalid hash value|does not match"):
        surgery.runner.fetch(tiny.spec('pretrained: "V1"'), progress=False)
    assert not tiny.cached.exists()


@pytest.mark.parametrize(
    "fields,message",
    [
        ('pretrained: "V11"', "did you mean 'V1'"),
        ('pretrained: "V1" weights: "w.pt"', "both a weights file"),
        ("""kwargs: '{"pretrained": true}'""", "pretrained: true"),
    ],
)
def test_bad_pretrained_names_are_located_errors(fields: str, message: str, tiny: Fixture) -> None:
    spec = tiny.spec(fields)
    with pytest.raises(SpecError) as caught:
        surgery.plan(spec)
    assert message in f"{caught.value.message} {caught.value.fix}" and caught.value.location.startswith(f"{spec}:")


def test_a_factory_without_a_weights_enum_is_refused_by_name(tmp_path: Path) -> None:
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" pretrained: "V1" } input_shape: [1, 1, 8, 8] }\n'
    )
    with pytest.raises(SpecError, match="takes no torchvision weights enum"):
        surgery.plan(spec)


def _head(tiny: Fixture, edit: str, out: str = "out") -> tuple[torch.Tensor, torch.Tensor]:
    path = tiny.spec('pretrained: "V1"', name=f"{out}.prototxt")
    path.write_text(path.read_text() + "seed: 3\n" + edit + "\n")
    model = surgery.load_torch_folder(surgery.apply(path, tiny.root / out).out_dir / "torch")
    return model.fc.weight.detach(), model.fc.bias.detach()


def test_keep_classes_copies_the_pretrained_rows_exactly(tiny: Fixture) -> None:
    tiny.place()
    weight, bias = _head(tiny, 'edit { classifier { layer: "fc" keep_classes: ["cherry", "0"] } }')
    assert torch.equal(weight, tiny.state["fc.weight"][[2, 0]]) and torch.equal(bias, tiny.state["fc.bias"][[2, 0]])
    weight, bias = _head(tiny, 'edit { classifier { layer: "fc" keep_classes: "banana" num_output: 4 } }', "mixed")
    assert weight.shape == (4, 4) and torch.equal(weight[0], tiny.state["fc.weight"][1])
    assert not torch.equal(weight[1:], torch.zeros(3, 4)) and torch.equal(bias[0], tiny.state["fc.bias"][1])


def test_keep_classes_reads_nothing_at_plan(tiny: Fixture) -> None:
    tiny.cached.parent.mkdir(parents=True)
    tiny.cached.write_bytes(b"\0" * 4096)
    spec = tiny.spec('pretrained: "V1"')
    spec.write_text(spec.read_text() + 'edit { classifier { layer: "fc" keep_classes: "apple" } }\n')
    assert surgery.plan(spec).net.shapes()["fc"] == (1, 1)


@pytest.mark.parametrize(
    "keep,message",
    [('"chery"', "did you mean 'cherry'"), ('"7"', "not a row"), ('["apple", "0"]', "kept twice")],
)
def test_keep_classes_mistakes_are_located(keep: str, message: str, tiny: Fixture) -> None:
    tiny.place()
    spec = tiny.spec('pretrained: "V1"')
    spec.write_text(spec.read_text() + f'edit {{ classifier {{ layer: "fc" keep_classes: {keep} }} }}\n')
    with pytest.raises(SpecError) as caught:
        surgery.plan(spec)
    assert message in f"{caught.value.message} {caught.value.fix}" and caught.value.location.startswith(f"{spec}:")


def test_keep_classes_from_the_python_api_by_row() -> None:
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(4, 3))
    net = surgery.load(head, (1, 4))
    surgery.classifier(net, "0", keep_classes=[2, 0])
    model = surgery.to_torch(net)
    assert torch.equal(model.layer_module("0").weight, head[0].weight.detach()[[2, 0]])


def test_heads_carry_their_class_names_in_the_report(tiny: Fixture) -> None:
    tiny.place()
    spec = tiny.spec('pretrained: "V1"')
    rows = {row["name"]: row for row in surgery.plan(spec).report.as_dict()["layers"]}
    assert rows["fc"]["classes"] == ["apple", "banana", "cherry"] and "classes" not in rows["conv"]
    keep = 'edit { classifier { layer: "fc" keep_classes: ["cherry", "0"] num_output: 3 } }\n'
    spec.write_text(spec.read_text() + keep)
    rows = {row["name"]: row for row in surgery.plan(spec).report.as_dict()["layers"]}
    assert rows["fc"]["classes"] == ["cherry", "apple", None]  # the third class is new
    spec.write_text(tiny.spec('pretrained: "V1"').read_text() + 'edit { classifier { layer: "fc" num_output: 5 } }\n')
    rows = {row["name"]: row for row in surgery.plan(spec).report.as_dict()["layers"]}
    assert "classes" not in rows["fc"]  # a resized head's classes are the user's, unnamed here


def test_stream_names_scores_as_the_report_names_the_head(tiny: Fixture) -> None:
    from surgery.video.stream import class_names

    tiny.place()
    spec = tiny.spec('pretrained: "V1"')
    assert class_names(surgery.plan(spec).net, 3) == ["apple", "banana", "cherry"]
    spec.write_text(spec.read_text() + 'edit { classifier { layer: "fc" keep_classes: "cherry" num_output: 2 } }\n')
    net = surgery.plan(spec).net
    assert class_names(net, 2) == ["cherry", "new 1"] and class_names(net, 3) is None
