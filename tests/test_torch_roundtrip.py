"""Torch in, torch out: every mapped layer type computes exactly what the source did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_nets import three_heads, toy_cnn

import surgery
from surgery.errors import ModelFormatError, ShapeError

# Same kernels run on both sides, so outputs must be bit-identical.


class Wrap(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


class Functional(nn.Module):
    """Traced calls: cat, +, *, flatten, F.relu, view(size), a module used twice, a get_attr."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.act = nn.ReLU()
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

    def forward(self, x):
        y = torch.cat([self.act(self.a(x)), self.act(self.b(x))], 1)
        y = y * self.scale + F.relu(y)
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        return torch.flatten(y, 1) + y.view(y.size(0), -1)


LAYER_CASES = {
    "conv_groups_dilation": (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 9, 9)),
    "linear_3d": (nn.Linear(5, 3), (2, 7, 5)),
    "batchnorm2d": (nn.BatchNorm2d(4), (3, 4, 5, 5)),
    "batchnorm1d": (nn.BatchNorm1d(4), (3, 4)),
    "relu": (nn.ReLU(), (2, 3, 4)),
    "leaky": (nn.LeakyReLU(0.2), (2, 3, 4)),
    "prelu": (nn.PReLU(3), (2, 3, 4, 4)),
    "sigmoid": (nn.Sigmoid(), (2, 3)),
    "tanh": (nn.Tanh(), (2, 3)),
    "hardswish": (nn.Hardswish(), (2, 3)),
    "hardsigmoid": (nn.Hardsigmoid(), (2, 3)),
    "maxpool_ceil_pad": (nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (1, 2, 8, 8)),
    "maxpool_dilation": (nn.MaxPool2d(2, 1, dilation=2), (1, 2, 7, 7)),
    "avgpool_ceil": (nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), (1, 2, 8, 8)),
    "adaptive": (nn.AdaptiveAvgPool2d((3, 2)), (1, 2, 7, 6)),
    "dropout": (nn.Dropout(0.3), (4, 10)),
    "flatten": (nn.Flatten(), (2, 3, 2, 2)),
    "lrn": (nn.LocalResponseNorm(3, alpha=1e-3, beta=0.75, k=2.0), (1, 6, 4, 4)),
    "softmax": (nn.Softmax(dim=1), (2, 5)),
    "functional": (Functional(), (2, 4, 6, 6)),
}


def _with_random_stats(module: nn.Module) -> nn.Module:
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-1, 1)
    return module


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_type_roundtrip(case: str) -> None:
    body, shape = LAYER_CASES[case]
    torch.manual_seed(0)
    source = _with_random_stats(Wrap(body))
    net = surgery.load(source, shape)
    emitted = surgery.to_torch(net)
    x = torch.randn(shape)
    for train in (False, True):
        source.train(train)
        emitted.train(train)
        torch.manual_seed(7)
        expected = source(x)
        torch.manual_seed(7)
        got = emitted(x)
        assert torch.equal(expected, got), f"{case} differs in {'train' if train else 'eval'} mode"
    # every inferred blob shape equals the real tensor shape
    shapes = net.shapes()
    assert shapes[net.outputs[0]] == tuple(expected.shape)


def test_typed_layers_are_recognised() -> None:
    net = surgery.load(Functional(), (2, 4, 6, 6))
    types = {layer.name: layer.type for layer in net.layers()}
    assert types["a"] == "Convolution" and types["b"] == "Convolution"
    assert types["cat"] == "Concat" and "Eltwise" in types.values() and types["flatten"] == "Flatten"
    assert types["act@1"] == "ReLU" and net.layer("act@1").extra["module_path"] == "act"
    assert types["scale"] == "Constant" and net.layer("scale").blobs["value"].trainable
    assert types["mean"] == "Reduction"
    assert types["view"] == "Reshape" and net.layer("view").params["shape"] == [0, 288], (
        "y.view(y.size(0), -1): the batch axis copied, the rest its traced size"
    )
    assert "OpaqueCall" not in types.values()


def test_state_dict_keys_and_values_survive() -> None:
    source = toy_cnn()
    emitted = surgery.to_torch(surgery.load(source, (2, 3, 16, 16)))
    theirs, ours = source.state_dict(), emitted.state_dict()
    assert list(theirs) == [k for k in ours if k in theirs] and set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_to_torch_copies_unless_told_not_to() -> None:
    source = toy_cnn()
    net = surgery.load(source, (2, 3, 16, 16))
    copied = surgery.to_torch(net)
    shared = surgery.to_torch(net, copy=False)
    with torch.no_grad():
        copied.classifier.fc2.weight.add_(1)
    assert not torch.equal(copied.classifier.fc2.weight, source.classifier.fc2.weight)
    assert shared.classifier.fc2.weight.data_ptr() == source.classifier.fc2.weight.data_ptr()


def test_multi_head_returns_every_head_in_train_mode() -> None:
    source = three_heads()
    net = surgery.load(source, (2, 3, 8, 8))
    assert net.outputs == ["classifier", "aux1.classifier", "aux2.classifier"]
    assert net.outputs_for(None) == ["classifier"]
    assert net.layer("aux1.fc").phase == "train" and net.layer("mid").phase is None
    model = surgery.to_torch(net)
    x = torch.randn(2, 3, 8, 8)
    heads = model.train()(x)
    reference = source.train()(x)
    assert list(heads) == ["classifier", "aux1.classifier", "aux2.classifier"]
    for got, expected in zip(heads.values(), reference):
        assert torch.equal(got, expected)
    assert torch.equal(model.eval()(x), source.eval()(x))


def test_standalone_folder_loads_with_only_torch(tmp_path: Path) -> None:
    net = surgery.load(three_heads(), (2, 3, 8, 8))
    surgery.lr(net, layer="stem", lr_mult=0)
    folder = surgery.save_torch(net, tmp_path / "model")
    x = torch.randn(2, 3, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    expected = surgery.to_torch(net).eval()(x)
    script = (
        "import importlib.util, sys, torch\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(folder / 'model.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "model = m.load().eval()\n"
        "assert 'surgery' not in sys.modules, 'the folder must not need surgery'\n"
        "assert not model.stem.weight.requires_grad and model.mid.weight.requires_grad\n"
        f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_param_groups_follow_lr_mult() -> None:
    net = surgery.load(toy_cnn(), (2, 3, 16, 16))
    surgery.lr(net, match="features.*", lr_mult=0)
    surgery.lr(net, layer="classifier.fc2", lr_mult=10, decay_mult=0)
    surgery.lr(net, layer="classifier.fc1", blob="bias", lr_mult=2, decay_mult=0)
    model = surgery.to_torch(net)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("features.")}
    groups = {
        (round(g["lr"], 9), round(g["weight_decay"], 9)): set(g["names"])
        for g in model.param_groups(lr=0.1, weight_decay=1e-3)
    }
    assert groups == {
        (0.1, 0.001): {"classifier.fc1.weight"},
        (0.2, 0.0): {"classifier.fc1.bias"},
        (1.0, 0.0): {"classifier.fc2.weight", "classifier.fc2.bias"},
    }


def test_frozen_batchnorm_keeps_its_statistics_while_training() -> None:
    net = surgery.load(toy_cnn(), (2, 3, 16, 16))
    surgery.lr(net, layer="features.block1_bn", lr_mult=0)
    frozen = surgery.to_torch(net)
    free = surgery.to_torch(surgery.load(toy_cnn(), (2, 3, 16, 16)))
    for model in (frozen, free):
        before = model.features.block1_bn.running_mean.clone()
        optimizer = torch.optim.SGD(model.param_groups(lr=0.1), lr=0.1)
        model.train()
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 3, 16, 16) * 3 + 1).sum().backward()
            optimizer.step()
        model.changed = not torch.equal(before, model.features.block1_bn.running_mean)
    assert not frozen.changed and free.changed
    assert not frozen.features.block1_bn.weight.requires_grad


def test_untraceable_model_names_the_call() -> None:
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(ModelFormatError) as error:
        surgery.load(Branchy(), (1, 3))
    message = str(error.value)
    assert "cannot trace Branchy" in message and "test_torch_roundtrip.py" in message and "x.sum() > 0" in message


def test_wrong_input_shape_names_the_layer() -> None:
    with pytest.raises(ShapeError, match=r"classifier.fc1"):
        surgery.load(toy_cnn(), (2, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.vision
@pytest.mark.parametrize(
    "name,shape",
    [
        ("resnet18", (2, 3, 64, 64)),
        ("mobilenet_v3_small", (2, 3, 64, 64)),
        ("vgg16", (1, 3, 224, 224)),
        ("googlenet", (2, 3, 96, 96)),
    ],
)
def test_torchvision_models_are_bit_identical(name: str, shape: tuple) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    kwargs = {"aux_logits": True, "init_weights": True} if name == "googlenet" else {}
    source = getattr(torchvision.models, name)(**kwargs)
    net = surgery.load(source, shape)
    model = surgery.to_torch(net)
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(x))
        torch.manual_seed(3)
        expected = source.train()(x)
        torch.manual_seed(3)
        got = model.train()(x)
    if name == "googlenet":
        assert list(got) == ["fc", "aux2.fc2", "aux1.fc2"]
        assert all(torch.equal(a, b) for a, b in zip(got.values(), expected))
    else:
        assert torch.equal(got, expected)


class InPlaceCases(nn.Module):
    """ReLUs the emitter may and may not run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.on_input = nn.ReLU()  # the user's tensor: never overwritten
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.after_conv = nn.ReLU()  # conv output read only here: in place
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.shared_input = nn.ReLU()  # conv2 output is also read by the sum: not in place
        self.on_view = nn.ReLU()  # a flatten is a view of its input: not in place

    def forward(self, x):
        y = self.after_conv(self.conv(self.on_input(x)))
        z = self.conv2(y)
        w = self.shared_input(z) + z
        return self.on_view(torch.flatten(w, 1))


def test_activations_run_in_place_only_where_safe() -> None:
    torch.manual_seed(0)
    source = InPlaceCases()
    x = torch.randn(2, 3, 5, 5)
    model = surgery.to_torch(surgery.load(source, tuple(x.shape)))
    assert {name: m.inplace for name, m in model.named_modules() if isinstance(m, nn.ReLU)} == {
        "on_input": False,
        "after_conv": True,
        "shared_input": False,
        "on_view": False,
    }
    kept = x.clone()
    model(x).sum().backward()
    source(x).sum().backward()
    assert torch.equal(x, kept), "the input tensor is never overwritten"
    for (name, ours), (_, theirs) in zip(model.named_parameters(), source.named_parameters()):
        assert torch.equal(ours.grad, theirs.grad), name
