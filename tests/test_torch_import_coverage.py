"""How the torch importer reads what timm and torchvision write: functional calls on a
module's own weights, optional inputs, mode-dependent helpers, index tensors, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgery
from surgery.emitters.onnx_model import emit_onnx
from surgery.verify import onnx_session


class MyLinear(nn.Linear):
    """timm's Linear: an nn.Linear subclass whose forward calls F.linear (traced through)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class SameConv(nn.Conv2d):
    """timm's Conv2dSame: pads by hand, then F.conv2d with the call's own padding 0."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class BnAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: F.batch_norm on its own statistics, then an activation."""

    def forward(self, x):
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            0.1,
            self.eps,
        )
        return F.relu(x)


class ChannelNorm(nn.LayerNorm):
    """timm's LayerNorm2d: a permute, F.layer_norm on its own weights, a permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """timm's DropPath: Python control flow on self.training (the traces differ)."""

    def forward(self, x):
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(0.5)
        return x * keep / 0.5


class TimmLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = SameConv(3, 6, 2, stride=2)
        self.bn = BnAct(6)
        self.norm = ChannelNorm(6)
        self.drop = DropPath()
        self.head = MyLinear(6, 5)

    def forward(self, x, attn_mask=None):
        y = self.norm(self.bn(self.conv(x)))
        y = (y + self.drop(y)).flatten(2)
        y = F.scaled_dot_product_attention(y, y, y, attn_mask=attn_mask)  # ViT's optional mask
        return self.head(y.mean(2))


def _model() -> TimmLike:
    torch.manual_seed(0)
    model = TimmLike()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.norm.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_functional_calls_on_module_weights_are_that_modules_layers(tmp_path: Path) -> None:
    model = _model()
    net = surgery.load(model, (2, 3, 8, 8))
    types = {layer.name: layer.type for layer in net.layers()}
    assert (types["conv"], types["bn"], types["norm"], types["head"]) == (
        "Convolution",
        "BatchNorm",
        "LayerNorm",
        "InnerProduct",
    )
    assert not any(t == "Constant" for t in types.values()), "no weight is left as a loose constant"
    assert types["drop"] == "Opaque", "a mode-dependent helper stays a module"
    assert net.layer("conv").params["pad"] == (0, 0) and net.layer("head").blobs["weight"].shape == (5, 6)
    x = torch.randn(2, 3, 8, 8)
    emitted = surgery.to_torch(net).eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(emitted(x), expected)
    emitted.train()
    with torch.no_grad():
        assert not torch.equal(emitted(x), expected), "in train mode the drop path drops (it follows the mode)"
    path = emit_onnx(net, tmp_path / "m.onnx")
    session = onnx_session(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    surgery.classifier(net, "head", num_output=3, seed=1)  # the head is editable by the module's name
    assert net.shapes()["head"] == (2, 3)


def test_an_optional_input_keeps_its_default() -> None:
    model = _model()
    net = surgery.load(model, (1, 3, 8, 8))
    assert [layer.name for layer in net.input_layers()] == ["x"]
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), model(x))


class StochasticBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torchvision = pytest.importorskip("torchvision")
        self.conv = nn.Conv2d(3, 3, 1)
        self.sd = torchvision.ops.StochasticDepth(0.5, "row")

    def forward(self, x):
        return self.sd(self.conv(x)) + x


def test_calls_given_self_training_follow_the_emitted_models_mode() -> None:
    model = StochasticBlock().eval()
    net = surgery.load(model, (8, 3, 4, 4))
    emitted = surgery.to_torch(net)
    assert "training" in emitted.surgery_source
    x = torch.randn(8, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(emitted.eval()(x), model(x))
        torch.manual_seed(1)
        dropped = emitted.train()(x) - x
    assert (dropped.flatten(1) == 0).all(1).any(), "in train mode some rows are dropped"


class AttentionDropout(nn.Module):
    """timm's attention: a dropout rate passed only while training."""

    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x, dropout_p=0.5 if self.training else 0.0)


def test_a_rate_passed_only_while_training_follows_the_emitted_models_mode(tmp_path: Path) -> None:
    model = AttentionDropout().eval()
    net = surgery.load(model, (2, 6, 4))
    emitted = surgery.to_torch(net)
    assert "training * 0.5" in emitted.surgery_source
    x = torch.randn(3, 6, 4)
    with torch.no_grad():
        assert torch.equal(emitted.eval()(x), model(x)), "no dropout in eval"
        torch.manual_seed(2)
        ours = emitted.train()(x)
        torch.manual_seed(2)
        assert torch.equal(ours, model.train()(x)), "the same dropout while training"
        assert not torch.equal(ours, model.eval()(x))
    session = onnx_session(emit_onnx(net, tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, model.eval()(x).numpy(), atol=1e-5, rtol=0)


class IndexTable(nn.Module):
    """Swin's relative position bias: a float table indexed by a long buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(9, 2))
        self.register_buffer("index", torch.randint(0, 9, (16,)))

    def forward(self, x):
        bias = self.table[self.index].view(4, 4, 2).permute(2, 0, 1)
        return x + bias.unsqueeze(0)


def test_index_tensors_keep_their_dtype(tmp_path: Path) -> None:
    model = IndexTable().eval()
    net = surgery.load(model, (3, 2, 4, 4))
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), model(x))
    path = emit_onnx(net, tmp_path / "m.onnx")
    session = onnx_session(path)
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], model(x).detach().numpy(), atol=1e-6, rtol=0
    )


class Patches(nn.Module):
    """ViT's patch arithmetic: `n_h * n_w` of two sizes read from the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 2, stride=2)

    def forward(self, x):
        n, _, h, w = x.shape
        n_h, n_w = h // 2, w // 2
        return self.proj(x).reshape(n, 4, n_h * n_w).permute(0, 2, 1)


def test_size_arithmetic_is_not_an_eltwise_layer(tmp_path: Path) -> None:
    model = Patches().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    assert not any(layer.type == "Eltwise" for layer in net.layers())
    for batch in (2, 5):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            expected = model(x)
            assert torch.equal(surgery.to_torch(net).eval()(x), expected)
        path = emit_onnx(net, tmp_path / "m.onnx")
        session = onnx_session(path)
        np.testing.assert_allclose(
            session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected.numpy(), atol=1e-5, rtol=0
        )


def test_an_eltwise_layer_on_sizes_is_a_clear_shape_error() -> None:
    from surgery.errors import ShapeError
    from surgery.ir import Layer
    from surgery.layers import layer_type
    from surgery.layers.meta_run import NonTensor

    layer = Layer("mul", "Eltwise", inputs=["a", "b"], params={"operation": "PROD", "coeff": []})
    with pytest.raises(ShapeError, match=r"reads the non-tensor value\(s\) 4, 4"):
        layer_type("Eltwise").infer_shapes(layer, [NonTensor(4), NonTensor(4)])


class InPlace(nn.Module):
    """Results left unused because the call mutated its input (``F.relu(y, inplace=True)``,
    ``noise.div_(p)``): later reads see the new values."""

    def forward(self, x):
        y = x * 2
        F.relu(y, inplace=True)
        noise = torch.ones_like(y)
        noise.div_(4)
        return y * noise


def test_later_reads_of_a_tensor_changed_in_place_see_the_change() -> None:
    model = InPlace().eval()
    net = surgery.load(model, (2, 3))
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), model(x))
    assert all(layer.phase is None for layer in net.layers()), "the in-place calls are on the deploy path"


class ReluInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        y.relu_()  # changes the module's output before it returns
        return y


class NegatedAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ReluInside()

    def forward(self, x):
        f = self.block(x)
        f.mul_(-1)  # changes it after the module returned
        return f + 1


def test_a_module_output_is_its_value_when_it_returns() -> None:
    torch.manual_seed(0)
    model = NegatedAfter().eval()
    x = torch.randn(2, 2, 3, 3)
    net = surgery.load(model, (2, 2, 3, 3))
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), model(x))
        surgery.cut(net, "block")
        assert torch.equal(surgery.to_torch(net).eval()(x), torch.relu(model.block.conv(x)))
