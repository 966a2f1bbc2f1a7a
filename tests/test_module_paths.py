"""A composite module's path (a residual block, a ViT encoder block) names the layer that
computes its output wherever a spec names one position: cut at, up_to, insert after, a
bottom. The references call the source's submodules directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.cli import main
from surgery.errors import SpecError

SHAPE = (2, 3, 8, 8)


class Residual(nn.Module):
    """x + conv(relu(bn(conv(x)))): the block's output is an ``add`` no layer is named after."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.bn(self.conv1(x))))


class Tiny(nn.Module):
    """A stem, a stage of two residual blocks, one block called twice, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(Residual(8), Residual(8))
        self.shared = Residual(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.pool(self.shared(self.shared(self.stage(self.stem(x))))))


def _source() -> Tiny:
    torch.manual_seed(0)
    model = Tiny().eval()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
    return model


def _onnx(net, path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    surgery.save_onnx(net, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("at", ["stage.1", "stage"])
def test_cut_at_a_block_keeps_its_prefix_exactly(at: str, tmp_path: Path) -> None:
    source = _source()
    net = surgery.load(source, SHAPE)
    blob = net.module_output(at)
    assert net.producer(blob).type == "Eltwise"  # the residual add, named after no module
    actions = surgery.cut(net, at)
    assert net.outputs == [blob]
    assert f"after the cut at {at!r} (module; its output is layer {net.producer(blob).name!r})" in actions[0].detail
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = source.stage[1](source.stage[0](source.stem(x)))
        got = surgery.to_torch(net).eval()(x)
    assert torch.equal(got, expected)
    np.testing.assert_allclose(_onnx(net, tmp_path / "cut.onnx", x), expected.numpy(), rtol=0, atol=1e-6)


def test_up_to_and_insert_after_and_bottom_take_a_block() -> None:
    source = _source()
    net = surgery.load(source, SHAPE)
    surgery.lr(net, up_to="stage.0", lr_mult=0)
    frozen = {layer.name for layer in net.layers() if layer.blobs and layer.blobs["weight"].lr_mult == 0}
    assert frozen == {"stem", "stage.0.conv1", "stage.0.bn", "stage.0.conv2"}
    surgery.insert(net, "stage.0", ['name: "gate" type: "ReLU"'])
    surgery.eltwise(net, "sum", ["stage.0", "stage.1"], operation="SUM")
    x = torch.randn(SHAPE)
    with torch.no_grad():
        block = source.stage[0](source.stem(x))  # "stage.0" stays the block's own output, before the gate
        y = block + source.stage[1](torch.relu(block))  # the sum replaces stage.1's output (the later one)
        expected = source.head(source.pool(source.shared(source.shared(y))))
        got = surgery.to_torch(net).eval()(x)
    assert torch.equal(got, expected)


def test_sequence_runs_a_block_per_frame() -> None:
    source = _source()
    net = surgery.load(source, SHAPE)
    actions = surgery.sequence(
        net, ['name: "pool" type: "TemporalPooling" pooling_param { pool: MAX }'], at="stage.0", frames=3
    )
    assert any("(at 'stage.0' (module; its output is layer " in a.detail for a in actions)
    clip = torch.randn(2, 3, *SHAPE[1:])
    with torch.no_grad():
        frames = [source.stage[0](source.stem(clip[:, t])).flatten(1) for t in range(3)]
        expected = torch.stack(frames, 1).amax(1)
        got = surgery.to_torch(net).eval()(clip)
    assert torch.equal(got, expected)


def test_a_misspelt_block_gets_a_did_you_mean_naming_the_module() -> None:
    net = surgery.load(_source(), SHAPE)
    with pytest.raises(SpecError, match=r"no layer named 'stage\.l'") as error:
        surgery.cut(net, "stage.l")
    assert "did you mean 'stage.1'" in error.value.fix
    assert error.value.subject == "stage.l"


def test_a_block_called_twice_is_refused_with_the_reason() -> None:
    net = surgery.load(_source(), SHAPE)
    before = net.layer_names()
    with pytest.raises(
        SpecError,
        match=r"'shared' is a module of the source, but it cannot stand for one layer: "
        r"the model calls it 2 times",
    ):
        surgery.cut(net, "shared")
    assert net.layer_names() == before


def test_an_edit_needing_a_layer_says_a_module_is_not_one() -> None:
    net = surgery.load(_source(), SHAPE)
    with pytest.raises(SpecError, match=r"'stage\.1' is a module of the source, not a layer") as error:
        surgery.remove(net, layer="stage.1")
    assert "'stage.1.*'" in error.value.fix


def test_a_block_an_earlier_edit_dropped_is_an_error_not_a_stale_layer() -> None:
    net = surgery.load(_source(), SHAPE)
    surgery.cut(net, "stage.0")
    with pytest.raises(SpecError, match=r"module 'stage\.1' computed blob '.*', which an earlier edit removed"):
        surgery.cut(net, "stage.1")
    with pytest.raises(SpecError) as error:  # the did-you-mean lists only modules still there
        surgery.cut(net, "stage.2")
    assert "'stage.0'" in error.value.fix and "'stage.1'" not in error.value.fix


def test_module_outputs_follow_renames_and_survive_copies_and_rollback() -> None:
    net = surgery.load(_source(), SHAPE)
    assert net.module_output("head") == "head.1"
    expected = dict(net.module_outputs)
    for twin in (net.copy(), net.skeleton()):
        assert twin.module_outputs == expected and twin.module_refusals == net.module_refusals
    with pytest.raises(RuntimeError), net.transaction():  # a failed edit puts the old entries back
        net.rename_layer("head.1", "gone")
        assert net.module_output("head") == "gone"
        raise RuntimeError
    assert net.module_outputs == expected
    surgery.classifier(net, "head.1", rename="head.digits", num_output=3)
    assert net.module_output("head") == "head.digits"


def test_spec_report_and_inspect_name_the_module(tmp_path: Path, capsys) -> None:
    factory = f"{Path(__file__).resolve()}:Tiny"
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "{factory}" }} input_shape: [2, 3, 8, 8] }}\nseed: 1\n'
        'edit { cut { at: "stage" } }\n'
        'edit { lr { up_to: "stage.0" lr_mult: 0 } }\n'
    )
    result = surgery.apply(spec, tmp_path / "out")
    report = json.loads((result.out_dir / "report.json").read_text())
    details = {edit["op"]: edit["detail"] for edit in report["edits"]}
    assert "after the cut at 'stage' (module; its output is layer " in details["cut"]
    assert "up_to 'stage.0' (module; its output is layer " in details["lr"]
    spec.write_text(spec.read_text().replace('at: "stage"', 'at: "stag"'))
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "spec.prototxt:3:" in err and "did you mean 'stage'" in err
    assert main(["inspect", factory, "--input-shape", "2,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "stage.1" in out.split("modules (")[1]
    assert "shared" in out.split("modules (")[1] and "calls it 2 times" in out


def _block_output(source: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``block`` returns while ``source`` runs on ``x`` (a forward hook)."""
    captured = {}
    hook = block.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    try:
        with torch.no_grad():
            source(x)
    finally:
        hook.remove()
    return captured["out"]


def _scaled_close(got: np.ndarray, expected: np.ndarray, scale_rtol: float = 1e-6) -> None:
    """max |got - expected| within ``scale_rtol`` of the largest |expected| (float32 runs of
    a deep net differ by rounding that grows with the values)."""
    assert np.abs(got - expected).max() <= scale_rtol * np.abs(expected).max()


def _check_every_module_output(source: nn.Module, shape: tuple[int, ...]) -> int:
    """Every module the importer recorded: the blob it names is exactly what the module
    returns (forward hooks on the source; the emitted model returns all those blobs at
    once). Returns how many modules were checked."""
    source.eval()
    net = surgery.load(source, shape)
    paths = [p for p in net.module_paths() if net.producer(net.module_outputs[p]).phase != "train"]
    blobs = list(dict.fromkeys(net.module_outputs[p] for p in paths))
    net.set_outputs(blobs)
    model = surgery.to_torch(net).eval()
    returned: dict[str, torch.Tensor] = {}
    hooks = [
        source.get_submodule(p).register_forward_hook(
            lambda module, inputs, output, p=p: returned.__setitem__(p, output.clone())
        )
        for p in paths
    ]
    x = torch.randn(shape)
    try:
        with torch.no_grad():
            source(x)
            outputs = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    outputs = outputs if isinstance(outputs, dict) else {blobs[0]: outputs}
    for path in paths:
        assert torch.equal(outputs[net.module_outputs[path]], returned[path]), path
    return len(paths)


def test_every_recorded_module_output_is_what_the_module_returns() -> None:
    torch.manual_seed(0)
    assert _check_every_module_output(_source(), SHAPE) == 4  # stage, stage.0, stage.1, head (not shared)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, name, size, kwargs",
    [
        ("torchvision", "resnet18", 32, {}),
        ("torchvision", "googlenet", 32, {"init_weights": False}),
        ("torchvision", "densenet121", 32, {}),
        ("torchvision", "convnext_tiny", 32, {}),
        ("torchvision", "swin_t", 32, {}),
        ("torchvision", "efficientnet_b0", 32, {}),
        ("torchvision", "mobilenet_v3_small", 32, {}),
        ("torchvision", "vit_b_16", 32, {"image_size": 32}),
        ("timm", "levit_128", 224, {}),
        ("timm", "coat_lite_tiny", 64, {"img_size": 64}),
    ],
)
def test_zoo_module_outputs_are_what_the_modules_return(family: str, name: str, size: int, kwargs: dict) -> None:
    torch.manual_seed(0)
    if family == "timm":
        source = pytest.importorskip("timm").create_model(name, pretrained=False, **kwargs)
    else:
        source = getattr(pytest.importorskip("torchvision").models, name)(**kwargs)
    assert _check_every_module_output(source, (1, 3, size, size)) > 10


def test_timm_cut_at_a_block(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, pretrained=False, num_classes=10).eval()
    net = surgery.load(source, (1, 3, 32, 32))
    surgery.cut(net, "blocks.5")
    x = torch.randn(1, 3, 32, 32)
    expected = _block_output(source, source.blocks[5], x)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), expected)
    _scaled_close(_onnx(net, tmp_path / "timm.onnx", x), expected.numpy(), 1e-5)


@pytest.mark.vision
def test_vit_cut_at_an_encoder_block_with_a_new_head_and_lr_by_glob(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = torchvision.models.vit_b_16(image_size=32).eval()
    net = surgery.load(source, (1, 3, 32, 32))
    surgery.cut(net, "encoder.layers.encoder_layer_5")
    surgery.append(
        net,
        ['name: "flat" type: "Flatten"', 'name: "head" type: "InnerProduct" inner_product_param { num_output: 7 }'],
        seed=3,
    )
    surgery.lr(net, match="encoder.layers.encoder_layer_*", lr_mult=0.5)
    surgery.lr(net, up_to="encoder.layers.encoder_layer_2", lr_mult=0)
    model = surgery.to_torch(net).eval()

    x = torch.randn(1, 3, 32, 32)
    block = _block_output(source, source.encoder.layers.encoder_layer_5, x)
    head = model.layer_module("head")
    with torch.no_grad():
        got = model(x)
        expected = nn.functional.linear(block.flatten(1), head.weight, head.bias)
    assert torch.equal(got, expected)
    _scaled_close(_onnx(net, tmp_path / "vit.onnx", x), expected.numpy(), 1e-5)

    # The glob reached every inner layer of blocks 0-5; up_to froze blocks 0-2 and the embedding.
    groups = model.param_groups(lr=1.0, weight_decay=0.0)
    by_lr = {round(group["lr"], 6): {id(p) for p in group["params"]} for group in groups}
    blocks = source.encoder.layers
    half = {
        id(p)
        for name, p in model.named_parameters()
        if name.startswith("encoder.layers.encoder_layer_")
        and name.split(".")[2] in ("encoder_layer_3", "encoder_layer_4", "encoder_layer_5")
    }
    assert by_lr[0.5] == half and len(half) == sum(1 for b in (3, 4, 5) for _ in blocks[b].parameters())
    assert by_lr[1.0] == {id(head.weight), id(head.bias)}
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert "conv_proj.weight" in frozen and any(n.startswith("encoder.layers.encoder_layer_2.") for n in frozen)
