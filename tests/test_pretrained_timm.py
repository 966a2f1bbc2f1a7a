"""timm weights by tag: a Hugging Face cache the test lays out itself (refs/main -> a
snapshot whose model.safetensors links to blobs/<sha256>) holding weights the test saved
for timm's tiny test_resnet; no network, nothing real downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import surgery
from surgery.cli import main
from surgery.errors import ModelFormatError, SpecError, SurgeryNote

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = "models--timm--test_resnet.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubCache:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.home = root / "hf_home"
        monkeypatch.setenv("HF_HOME", str(self.home))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        torch.manual_seed(0)
        self.state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
        staged = root / "staged.safetensors"
        safetensors_torch.save_file(self.state, str(staged))
        self.data = staged.read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.repo = self.home / "hub" / REPO
        self.file = self.repo / "snapshots" / COMMIT / "model.safetensors"

    def place(self, data: bytes | None = None) -> None:
        (self.repo / "blobs").mkdir(parents=True, exist_ok=True)
        (self.repo / "refs").mkdir(exist_ok=True)
        (self.repo / "refs" / "main").write_text(COMMIT)
        (self.repo / "blobs" / self.sha256).write_bytes(self.data if data is None else data)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        if not self.file.is_symlink():
            os.symlink(f"../../blobs/{self.sha256}", self.file)

    def spec(self, torch_fields: str, edits: str = "") -> Path:
        path = self.root / "spec.prototxt"
        path.write_text(
            f'source {{ torch {{ factory: "timm:test_resnet" {torch_fields} }} input_shape: [1, 3, 64, 64] }}\n{edits}'
        )
        return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    return HubCache(tmp_path, monkeypatch)


FORMS = ['pretrained: "r160_in1k"', 'pretrained: "true"', """kwargs: '{"pretrained": true}'""",
         'pretrained: "test_resnet.r160_in1k"']  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_every_form_resolves_to_the_cache_and_plan_reads_no_byte(form: str, hub: HubCache) -> None:
    hub.place(data=b"\0" * 4096)  # garbage under the right name: plan must not read it
    plan = surgery.plan(hub.spec(form))
    assert plan.net.pretrained["name"] == "timm test_resnet.r160_in1k"
    assert plan.net.pretrained["file"] == str(hub.file) and plan.net.pretrained["cache"] == "huggingface"
    with pytest.raises(ModelFormatError, match=r"damaged or not timm test_resnet\.r160_in1k.*blob name"):
        surgery.apply(hub.spec(form), hub.root / "out")
    assert not (hub.root / "out").exists()


def test_apply_reads_the_weights_exactly_with_their_preprocessing_and_classes(hub: HubCache) -> None:
    hub.place()
    edits = 'edit { classifier { layer: "fc" keep_classes: ["goldfish, Carassius auratus", "0"] } }\n'
    result = surgery.apply(hub.spec('pretrained: "r160_in1k"', edits), hub.root / "out")
    model = surgery.load_torch_folder(result.out_dir / "torch")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in hub.state.items() if not k.startswith("fc."))
    assert torch.equal(state["fc.weight"], hub.state["fc.weight"][[1, 0]])
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["pretrained"]["sha256"] == hub.sha256
    block = report["preprocess"]
    assert block["mean"] == [127.5] * 3 and block["std"] == [127.5] * 3
    assert report["pretrained"]["preprocessing"]["input_size"] == [3, 160, 160]
    # timm's 160 crop of a 168 resize (160 / crop_pct 0.95), fitted to the 64x64 input the spec builds
    assert block["crop"] == [64] and block["resize"] == [67]
    assert block["origin"] == {"*": "timm test_resnet.r160_in1k", "crop": "input_shape", "resize": "input_shape"}
    assert model.PREPROCESSING == block
    props = {p.key: p.value for p in onnx.load(str(result.out_dir / "model.onnx")).metadata_props}
    assert json.loads(props["surgery.preprocessing"]) == block
    fc = next(row for row in report["layers"] if row["name"] == "fc")
    assert fc["classes"] == ["goldfish, Carassius auratus", "tench, Tinca tinca"]


def test_the_refs_and_hf_hub_cache_are_respected(hub: HubCache, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.place()
    moved = hub.root / "elsewhere"
    hub.home.rename(hub.root / "old_home")
    (hub.root / "old_home" / "hub").rename(moved)
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    plan = surgery.plan(hub.spec('pretrained: "r160_in1k"'))
    assert plan.net.pretrained["file"] == str(moved / REPO / "snapshots" / COMMIT / "model.safetensors")
    (moved / REPO / "refs" / "main").write_text("f" * 40)  # main moved on to a snapshot not in the cache
    with pytest.warns(SurgeryNote, match="not in the Hugging Face cache"):  # plan reads no weights
        surgery.plan(hub.spec('pretrained: "r160_in1k"'))
    with pytest.raises(SpecError, match="not in the Hugging Face cache"):
        surgery.apply(hub.spec('pretrained: "r160_in1k"'), hub.root / "out")


def test_a_missing_file_says_how_to_get_it_and_nothing_downloads(hub: HubCache, capsys) -> None:
    spec = str(hub.spec('pretrained: "r160_in1k"'))
    for argv, code in ((["plan", spec], 0), (["apply", "-q", spec, "-o", str(hub.root / "out")], 2)):
        assert main(argv) == code  # plan reads no weights: a note; apply needs them: an error
        err = capsys.readouterr().err
        assert "not in the Hugging Face cache" in err and "Traceback" not in err
        assert "https://huggingface.co/timm/test_resnet.r160_in1k/resolve/main/model.safetensors" in err
        assert "huggingface-cli download timm/test_resnet.r160_in1k model.safetensors" in err
    assert not (hub.root / "out").exists()


def test_an_unknown_tag_or_model_is_a_located_error(hub: HubCache) -> None:
    with pytest.raises(SpecError) as caught:
        surgery.plan(hub.spec('pretrained: "r160_in1"'))
    assert "did you mean 'r160_in1k'" in caught.value.fix and caught.value.location.startswith(str(hub.root))
    spec = hub.root / "other.prototxt"
    spec.write_text('source { torch { factory: "timm:tset_resnet" } input_shape: [1, 3, 64, 64] }\n')
    with pytest.raises(SpecError, match="timm has no model 'tset_resnet'"):
        surgery.plan(spec)


def test_fetch_checks_what_is_cached_and_offline_says_so(hub: HubCache, capsys) -> None:
    spec = hub.spec('pretrained: "r160_in1k"')
    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported, and refuses the network
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.run([sys.executable, "-m", "surgery.cli", "fetch", str(spec)], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "cannot download https://huggingface.co/timm/test_resnet.r160_in1k" in run.stderr
    hub.place()
    assert main(["fetch", str(spec)]) == 0
    assert "in the cache already (hash checked)" in capsys.readouterr().out


def test_timms_own_create_model_call_is_the_short_form(tmp_path: Path, capsys) -> None:
    from surgery.cli import main

    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "timm:create_model" kwargs: \'{"model_name": "resnet18", "num_classes": 7}\' } '
        "input_shape: [1, 3, 32, 32] }\n"
    )
    assert main(["plan", "-q", str(spec)]) == 0, capsys.readouterr().err
    assert "outputs: fc" in capsys.readouterr().out
    spec.write_text('source { torch { factory: "timm:create_model" } input_shape: [1, 3, 32, 32] }\n')
    assert main(["plan", "-q", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "needs the model's name in kwargs" in err and 'factory: "timm:resnet50"' in err
