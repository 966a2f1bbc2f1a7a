"""Low-rank adapters (`edit { lora { } }`), checked against PEFT itself: the same adapter
weights give PEFT's forward (<= 1e-6), PEFT loads the `output { peft { } }` folder onto the
source model, the deploy ONNX holds the merged weights in exactly the source's nodes and
computes what PEFT's merge_and_unload() does (<= 1e-5 of the output's scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from untrusted_files import run_cli

import surgery
from surgery.emitters.onnx_model import build_model
from surgery.emitters.peft import write_adapter

peft = pytest.importorskip("peft")
ort = pytest.importorskip("onnxruntime")

MODEL = '''
import torch
from torch import nn


class Small(nn.Module):
    """A conv trunk, a hidden linear layer and a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.conv(x))))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


def small():
    torch.manual_seed(0)
    return Small()
'''


def _source() -> torch.nn.Module:
    """The model the factory builds, built here from the same source."""
    import importlib.util
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "small_source.py"
        path.write_text(MODEL)
        spec = importlib.util.spec_from_file_location("small_source", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.small().eval()


def _spec(tmp_path: Path, edits: str, output: str = "") -> Path:
    (tmp_path / "small.py").write_text(MODEL)
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "small.py:small" } input_shape: [1, 3, 8, 8] }\nseed: 5\n' + edits + output
    )
    return spec


ADAPT = (
    'edit { lora { layer: "conv" rank: 2 alpha: 4 dropout: 0.1 } }\n'
    'edit { lora { layer: "fc" rank: 4 alpha: 4 dropout: 0.1 } }\n'
    'edit { lr { layer: "grouped" lr_mult: 0 } }\n'
)


def _trained(net: surgery.Net) -> None:
    """Adapters as after some training: B no longer zero."""
    generator = torch.Generator().manual_seed(7)
    for layer in net.layers():
        if "lora_B" in layer.blobs:
            for role in ("lora_A", "lora_B"):
                data = layer.blobs[role].data
                data.copy_(torch.randn(data.shape, generator=generator) * 0.3)


def test_an_adapted_net_starts_as_the_source_and_trains_only_what_it_says(tmp_path: Path) -> None:
    net = surgery.plan(_spec(tmp_path, ADAPT), shapes_only=False).net
    model = surgery.to_torch(net).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _source()(x), rtol=0, atol=0)  # B is zero: exactly the source
    names = {name for group in model.param_groups(lr=0.1) for name in group["names"]}
    assert {"conv.lora_A", "conv.lora_B", "fc.lora_A", "fc.lora_B", "head.weight", "head.bias"} == names
    origin = net.layer("fc").blobs["lora_A"].origin
    assert origin.kind == "filler" and "seed 5" in origin.detail
    assert "B starts at zero" in net.layer("fc").blobs["lora_B"].origin.detail
    # PEFT's initialisation bound for A: 1 / sqrt(fan_in)
    bound = 1 / np.sqrt(3 * 3 * 3)
    values = net.layer("conv").blobs["lora_A"].array()
    assert np.abs(values).max() <= bound and np.abs(values).max() > bound * 0.5


def test_the_same_adapters_give_peft_s_forward(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ADAPT)
    net = surgery.plan(spec, shapes_only=False).net
    _trained(net)
    write_adapter(net, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_source(), tmp_path / "adapter").eval()
    ours = surgery.to_torch(net).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    assert float((got - want).abs().max()) <= 1e-6
    # the head trains besides the adapters: PEFT saved it whole and loaded it
    assert theirs.base_model.model.head.modules_to_save["default"].weight.shape == (5, 16)


def test_the_deploy_onnx_is_merged_into_the_source_s_nodes(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ADAPT)
    net = surgery.plan(spec, shapes_only=False).net
    _trained(net)
    (tmp_path / "plain").mkdir()
    plain = surgery.plan(_spec(tmp_path / "plain", ""), shapes_only=False).net
    merged, source = build_model(net), build_model(plain)
    assert [n.op_type for n in merged.graph.node] == [n.op_type for n in source.graph.node]
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    write_adapter(net, tmp_path / "adapter")
    dense = peft.PeftModel.from_pretrained(_source(), tmp_path / "adapter").merge_and_unload().eval()
    with torch.no_grad():
        want = dense(torch.from_numpy(x)).numpy()
        ours = surgery.to_torch(net).eval()
        unmerged = ours(torch.from_numpy(x)).numpy()
        folded = ours.merge_adapters()(torch.from_numpy(x)).numpy()
    scale = float(np.abs(want).max())
    for value in (got, unmerged, folded):
        assert float(np.abs(value - want).max()) <= 1e-5 * scale
    assert isinstance(ours.fc, torch.nn.Linear) and not hasattr(ours.fc, "lora_A")


def test_apply_writes_a_peft_folder_peft_loads_and_verifies(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, ADAPT, "output { pytorch { } onnx { } peft { } }\n")
    code, out, _ = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"), "--verify")
    assert code == 0 and "verified: all within tolerance" in out
    loaded = peft.PeftModel.from_pretrained(_source(), tmp_path / "out" / "peft").eval()
    model = surgery.load_torch_folder(tmp_path / "out" / "torch").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert float((loaded(x) - model(x)).abs().max()) <= 1e-6
    onnx_model = onnx.load(tmp_path / "out" / "model.onnx")
    assert not any("lora" in init.name for init in onnx_model.graph.initializer)


@pytest.mark.parametrize(
    "edit,message",
    [
        ('edit { lora { layer: "conv" rank: 0 } }', "rank must be at least 1"),
        ('edit { lora { layer: "grouped" } }', "grouped convolution"),
        ('edit { lora { match: "relu*" } }', "none of them an InnerProduct or a Convolution"),
        ('edit { lora { layer: "conv" } }\nedit { lora { layer: "conv" } }', "has an adapter already"),
        ('edit { lora { layer: "conv" dropout: 1 } }', "dropout must be in [0, 1)"),
    ],
)
def test_lora_mistakes_are_located(tmp_path: Path, capsys, edit: str, message: str) -> None:
    code, _, err = run_cli(capsys, "plan", str(_spec(tmp_path, edit + "\n")))
    assert code == 2 and message in err, err


@pytest.mark.parametrize(
    "edits,message",
    [
        ("", "adds none"),
        ('edit { lora { layer: "conv" } }\nedit { lora { layer: "fc" dropout: 0.2 } }\n', "differ in dropout"),
    ],
)
def test_a_peft_output_pefts_config_cannot_say_is_refused_before_writing(
    tmp_path: Path, capsys, edits: str, message: str
) -> None:
    spec = _spec(tmp_path, edits, "output { peft { } }\n")
    code, _, err = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_adapters_on_a_transformers_vit_match_peft_on_transformers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_models import small_configs
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(small_configs()["vit"]).save_pretrained(tmp_path / "vit")
    spec = tmp_path / "vit.prototxt"
    spec.write_text(
        'source { hf { path: "vit" } }\nseed: 2\n'
        'edit { lora { match: "vit.layers.*.attention.*_proj" match: "vit.layers.*.mlp.fc*" rank: 4 alpha: 8 } }\n'
        'edit { classifier { layer: "classifier" keep_classes: ["LABEL_3", "LABEL_0"] } }\n'
    )
    with pytest.raises(surgery.SurgeryError, match=r"'vit\.embeddings\.cls_token' is a bare parameter"):
        write_adapter(surgery.plan(spec, shapes_only=False).net, tmp_path / "refused")
    spec.write_text(spec.read_text() + 'edit { lr { match: "vit.embeddings.*" lr_mult: 0 } }\n')
    net = surgery.plan(spec, shapes_only=False).net
    assert sum("lora" in layer.params for layer in net.layers()) == 12  # 4 projections + 2 MLP layers, twice
    _trained(net)
    write_adapter(net, tmp_path / "adapter")
    base = AutoModelForImageClassification.from_pretrained(tmp_path / "vit", use_kernels=False)
    base.classifier = torch.nn.Linear(32, 2)  # the spec's head: two of the five classes
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(pixel_values=x).logits
        got = surgery.to_torch(net).eval()(x)
    assert float((got - want).abs().max()) <= 1e-6


def _peft_trained(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """An adapter PEFT made and 'trained' (random A and B, a changed head), saved by PEFT."""
    torch.manual_seed(3)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["conv", "fc"], modules_to_save=["head"], rank_pattern={"conv": 2}
    )
    model = peft.get_peft_model(_source(), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(tmp_path / "trained")
    return model.eval(), tmp_path / "trained"


def test_an_adapter_peft_trained_reads_back_exactly(tmp_path: Path, capsys) -> None:
    theirs, _ = _peft_trained(tmp_path)
    spec = _spec(tmp_path, 'edit { lora { from_peft: "trained" } }\n')
    net = surgery.plan(spec, shapes_only=False).net
    assert net.layer("conv").params["lora"]["rank"] == 2 and net.layer("fc").params["lora"]["rank"] == 4
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want, got = theirs(x), surgery.to_torch(net).eval()(x)
    assert float((got - want).abs().max()) <= 1e-6
    # the deploy file: merged, as PEFT's merge_and_unload() computes
    code, _, _ = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"), "--verify")
    assert code == 0
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    merged = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        dense = theirs.merge_and_unload()(x).numpy()
    assert float(np.abs(merged - dense).max()) <= 1e-5 * float(np.abs(dense).max())


@pytest.mark.parametrize(
    "how,message",
    [
        ("no config", "has no adapter_config.json"),
        ("pickle", "adapter_model.bin is a pickle"),
        ("dora", "uses DoRA"),
        ("other layer", "names layer 'fc2', which the net does not have"),
        ("too large", "PEFT adapter weights"),
    ],
)
def test_bad_peft_folders_are_one_located_error(tmp_path: Path, capsys, monkeypatch, how: str, message: str) -> None:
    import json

    from safetensors.torch import load_file, save_file

    _, folder = _peft_trained(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    if how == "no config":
        (folder / "adapter_config.json").unlink()
    elif how == "pickle":
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    elif how == "dora":
        (folder / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    elif how == "too large":  # its size is checked against the memory budget before it is read
        tensors = load_file(folder / "adapter_model.safetensors")
        tensors["base_model.model.head.padding"] = torch.zeros(1 << 20)  # 4 MiB
        save_file(tensors, folder / "adapter_model.safetensors")
        monkeypatch.setenv("SURGERY_MEMORY_BUDGET", "2M")
    else:
        tensors = load_file(folder / "adapter_model.safetensors")
        save_file({k.replace(".fc.", ".fc2."): v for k, v in tensors.items()}, folder / "adapter_model.safetensors")
    spec = _spec(tmp_path, 'edit { lora { from_peft: "trained" } }\n')
    code, _, err = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_adapters_kept_as_nodes_compute_the_same(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, ADAPT, "output { pytorch { } onnx { adapters: KEEP } }\n")
    code, out, _ = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"), "--verify")
    assert code == 0 and "verified: all within tolerance" in out
    names = {init.name for init in onnx.load(tmp_path / "out" / "model.onnx").graph.initializer}
    assert {"conv.lora_A", "conv.lora_B", "fc.lora_A", "fc.lora_B"} <= names
    net = surgery.plan(spec, shapes_only=False).net
    _trained(net)
    kept = build_model(net, adapters="KEEP")
    assert len(kept.graph.node) == len(build_model(net).graph.node) + 2 * 4  # A, B, scale, add per adapter
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(kept.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())
