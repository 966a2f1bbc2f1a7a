"""Hugging Face transformers models: `source { hf { } }` (a save_pretrained folder, or a Hub
id in a local cache laid out as huggingface_hub lays it out) and torch factories torch.fx
cannot trace, read through torch.export. Every model is built here from a small config with
seeded random weights; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import Logits, small_configs
from untrusted_files import run_cli

import surgery

transformers = pytest.importorskip("transformers")

LABELS = ["cat", "dog", "fox", "owl", "yak"]


def _configs() -> dict[str, object]:
    return small_configs(LABELS)


FAMILIES = list(_configs())


def _save(folder: Path, family: str, seed: int = 0) -> torch.nn.Module:
    """A save_pretrained folder of ``family`` with seeded weights and a ViT processor."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageClassification.from_config(_configs()[family]).eval()
    with torch.no_grad():  # random, not the zero/one init of some heads: a real test of every weight
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def _spec(tmp_path: Path, source: str, edits: str = "", name: str = "spec.prototxt") -> Path:
    spec = tmp_path / name
    spec.write_text(f"source {{ {source} input_shape: [1, 3, 32, 32] }}\n{edits}")
    return spec


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * max(scale, 1e-30), (got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_save_pretrained_folder_imports_exactly_with_module_names(tmp_path: Path, family: str) -> None:
    source = _save(tmp_path / "model", family)
    spec = _spec(tmp_path, 'hf { path: "model" }')
    net = surgery.plan(spec, shapes_only=False).net
    head = net.producer(net.outputs[0])
    assert head.type == "InnerProduct" and head.name.startswith("classifier")  # ResNet's is classifier.1
    typed = {layer.type for layer in net.layers()}
    assert typed & {"Convolution", "InnerProduct"} and "Opaque" not in typed
    # every weight-carrying layer is named by its module path in the source
    modules = dict(source.named_modules())
    for layer in net.layers():
        if layer.type in ("Convolution", "InnerProduct", "LayerNorm", "BatchNorm"):
            assert layer.name in modules, layer.name
    model = surgery.to_torch(net).eval()
    x = torch.randn(3, 3, 32, 32)  # another batch than the spec's and the export's
    with torch.no_grad():
        _close(model(x), source(x).logits)
    assert net.pretrained["categories"] == LABELS
    assert net.preprocess.mean == (127.5, 127.5, 127.5) and net.preprocess.resize == (32, 32)


@pytest.mark.parametrize("family", ["vit", "swin", "convnext"])
def test_a_classifier_resize_verifies_and_runs_in_onnxruntime(tmp_path: Path, family: str, capsys) -> None:
    _save(tmp_path / "model", family)
    edits = 'edit { classifier { layer: "classifier" num_output: 3 } }\n'
    spec = _spec(tmp_path, 'hf { path: "model" }', edits)
    code, out, _ = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"), "--verify")
    assert code == 0 and "verified: all within tolerance" in out
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    (scores,) = session.run(None, {session.get_inputs()[0].name: x})
    model = surgery.load_torch_folder(tmp_path / "out" / "torch").eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_lr_and_cut_name_transformer_modules(tmp_path: Path) -> None:
    _save(tmp_path / "model", "vit")
    edits = 'edit { lr { up_to: "vit.layers.0" lr_mult: 0 } }\n'
    spec = _spec(tmp_path, 'hf { path: "model" }', edits)
    net = surgery.plan(spec).net
    frozen = {layer.name for layer in net.layers() if layer.blobs and all(b.lr_mult == 0 for b in layer.blobs.values())}
    assert {"vit.embeddings.cls_token", "vit.layers.0.attention.q_proj", "vit.layers.0.mlp.fc2"} <= frozen
    assert "vit.layers.1.attention.q_proj" not in frozen and "classifier" not in frozen
    keep = _spec(
        tmp_path,
        'hf { path: "model" }',
        'edit { classifier { layer: "classifier" keep_classes: ["owl", "cat"] } }',
        "keep.prototxt",
    )
    result = surgery.apply(keep, tmp_path / "keep")
    head = surgery.load_torch_folder(result.out_dir / "torch").classifier
    source = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "model")
    assert torch.equal(head.weight.detach(), source.classifier.weight.detach()[[3, 0]])


def test_a_factory_fx_cannot_trace_goes_through_torch_export(tmp_path: Path) -> None:
    source = _save(tmp_path / "model", "vit")
    (tmp_path / "factory.py").write_text(
        "from pathlib import Path\n"
        "from transformers import AutoModelForImageClassification\n"
        "def vit():\n"
        "    folder = Path(__file__).parent / 'model'\n"
        "    return AutoModelForImageClassification.from_pretrained(folder, use_kernels=False)\n"
    )
    spec = _spec(tmp_path, 'torch { factory: "factory.py:vit" }')
    net = surgery.plan(spec, shapes_only=False, trust_code=True).net
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(surgery.to_torch(net).eval()(x), source(x).logits)
    hidden = _spec(tmp_path, 'torch { factory: "factory.py:vit" output: "logits" }', name="named.prototxt")
    assert surgery.plan(hidden, trust_code=True).net.outputs == ["classifier"]
    wrong = _spec(tmp_path, 'torch { factory: "factory.py:vit" output: "hidden" }', name="wrong.prototxt")
    with pytest.raises(surgery.SurgeryError, match="no entry 'hidden'; it has 'logits'"):
        surgery.plan(wrong, trust_code=True)


# ---------------------------------------------------------------- the Hub's cache
def _cache(tmp_path: Path, family: str = "vit", repo: str = "owner/tiny-vit") -> tuple[Path, Path]:
    """A Hugging Face cache holding ``repo`` at main, laid out as huggingface_hub lays it
    out: blobs named by their sha256 (a large file's) and a snapshot of links to them."""
    import hashlib

    made = tmp_path / "made"
    _save(made, family)
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for file in made.iterdir():
        blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    return tmp_path / "hub", snapshot


def test_a_hub_model_is_read_from_the_cache_and_hash_checked(tmp_path: Path, monkeypatch, capsys) -> None:
    hub, snapshot = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    spec = _spec(tmp_path, 'hf { model: "owner/tiny-vit" }')
    result = surgery.apply(spec, tmp_path / "out")
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["pretrained"]["cache"] == "huggingface" and "model.safetensors" in report["pretrained"]["sha256"]
    # a damaged blob: located, exit 2, nothing written
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "damaged"))
    assert code == 2 and "is damaged" in err and not (tmp_path / "damaged").exists()
    # plan reads no weights: it works on the damaged file
    assert run_cli(capsys, "plan", str(spec))[0] == 0


@pytest.mark.parametrize(
    "source,message,fix",
    [
        ('hf { model: "owner/absent" }', "is not in the cache", "surgery fetch SPEC"),
        ('hf { model: "owner/tiny-vit" revision: "v9" }', "at revision 'v9' is not in the cache", "--revision v9"),
        ('hf { model: "../escape" }', "is not a Hugging Face model id", "owner/name"),
        ('hf { path: "nowhere" }', "has no config.json", "save_pretrained"),
    ],
)
def test_a_model_not_there_is_one_located_error(
    tmp_path: Path, monkeypatch, capsys, source: str, message: str, fix: str
) -> None:
    hub, _ = _cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    code, _, err = run_cli(capsys, "plan", str(_spec(tmp_path, source)))
    assert code == 2 and message in err and fix in err


def _broken(folder: Path, how: str) -> None:
    if how == "no weights":
        (folder / "model.safetensors").unlink()
    elif how == "pickle only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif how in ("unknown architecture", "not a model class"):
        config = json.loads((folder / "config.json").read_text())
        # a name transformers lacks, and one it has that is no model (a stranger's config names it)
        config["architectures"] = ["NoSuchModelForImageClassification" if how == "unknown architecture" else "pipeline"]
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "damaged weights":
        weights = folder / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[8:20] = b"not a header"
        weights.write_bytes(bytes(data))
    elif how in ("missing shard", "shard outside"):
        shard = "model-00002-of-00002.safetensors" if how == "missing shard" else "../outside.safetensors"
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        index = {"weight_map": {"classifier.weight": "model-00001-of-00002.safetensors", "classifier.bias": shard}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        (folder.parent / "outside.safetensors").write_bytes(b"secret")


@pytest.mark.parametrize(
    "how,message",
    [
        ("no weights", "has no model.safetensors"),
        ("pickle only", "pytorch_model.bin, which surgery does not read"),
        ("unknown architecture", "'NoSuchModelForImageClassification', which is not a model class"),
        ("not a model class", "'pipeline', which is not a model class"),
        ("damaged weights", "cannot load model's weights: SafetensorError"),
        ("missing shard", "names the shard 'model-00002-of-00002.safetensors', which is not in"),
        ("shard outside", "outside"),
    ],
)
def test_bad_model_folders_are_one_located_error(tmp_path: Path, capsys, how: str, message: str) -> None:
    _save(tmp_path / "model", "vit")
    _broken(tmp_path / "model", how)
    spec = _spec(tmp_path, 'hf { path: "model" }')
    code, _, err = run_cli(capsys, "apply", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()
    assert err.count("error") == 1


def test_torch_add_and_sub_keep_their_alpha_through_torch_export() -> None:
    """``torch.add(a, b, alpha=2)`` exports as ``aten.add.Tensor`` with alpha: it stays that."""
    from surgery.importers.torch_export import import_exported

    class Scaled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.add(x, x * 3, alpha=2) - torch.sub(x, x * 2, alpha=0.5)

    model = Scaled()
    net = import_exported(model, [(1, 4)], None, "scaled")
    x = torch.randn(3, 4)
    torch.testing.assert_close(surgery.to_torch(net)(x), model(x), rtol=0, atol=0)


def test_fetch_of_a_local_folder_says_there_is_nothing_to_fetch(tmp_path: Path) -> None:
    _save(tmp_path / "model", "resnet")
    assert "nothing to fetch" in surgery.fetch(_spec(tmp_path, 'hf { path: "model" }'))


def test_a_dynamo_export_with_its_batch_baked_in_resizes_at_another_batch(tmp_path: Path) -> None:
    """torch's dynamo exporter writes the example's batch (2) into the classifier's Reshape
    target; read at batch 1 (and resized), the target follows the batch."""
    import onnxruntime as ort

    from surgery.importers.onnx_model import import_onnx

    model = _save(tmp_path / "model", "resnet")
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(Logits(model), (torch.zeros(2, 3, 32, 32),), path, input_names=["x"], dynamo=True, verbose=False)
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = import_onnx(path, input_shape=(1, 3, 32, 32))
    with torch.no_grad():
        got = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    want = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    head = net.producer(net.outputs[0]).name
    spec = tmp_path / "resize.prototxt"
    spec.write_text(
        f'source {{ onnx {{ path: "resnet.onnx" }} input_shape: [1, 3, 32, 32] }}\n'
        f'edit {{ classifier {{ layer: "{head}" num_output: 3 }} }}\n'
    )
    assert surgery.plan(spec).net.shapes()[net.outputs[0]] == (1, 3)


def test_the_torchscript_gelu_formula_reads_as_gelu(tmp_path: Path) -> None:
    """The TorchScript exporter writes ConvNeXt's GELU as x * 0.5 * (1 + erf(x / sqrt 2)):
    read back as one GELU layer, exactly what onnxruntime computes on the file."""
    import onnxruntime as ort

    from surgery.importers.onnx_model import import_onnx

    model = _save(tmp_path / "model", "convnext")
    path = tmp_path / "convnext.onnx"
    torch.onnx.export(
        Logits(model), (torch.zeros(2, 3, 32, 32),), path, input_names=["x"], dynamo=False, opset_version=17,
        dynamic_axes={"x": {0: "batch"}},
    )  # fmt: skip
    import onnx

    assert sum(node.op_type == "Erf" for node in onnx.load(path).graph.node) == 4
    net = import_onnx(path, input_shape=(1, 3, 32, 32))
    assert sum(layer.type == "GELU" for layer in net.layers()) == 4
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
