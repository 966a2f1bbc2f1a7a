"""StochasticDepth: torchvision's stochastic_depth is a typed layer that follows the
emitted model's mode, drops the same rows as the source under the same seed, is the
identity in ONNX, and is refused by Caffe by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.verify import onnx_session

torchvision = pytest.importorskip("torchvision")


class Block(nn.Module):
    """A residual block as torchvision writes it: conv branch, stochastic depth, skip."""

    def __init__(self, mode: str, p: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = torchvision.ops.StochasticDepth(p, mode)

    def forward(self, x):
        return self.drop(self.conv(x)) + x


class ForcedOn(nn.Module):
    """A call that drops rows even in eval: not the mode-following layer."""

    def forward(self, x):
        return torchvision.ops.stochastic_depth(x, 0.5, "row", True)


def _net(model: nn.Module, shape=(8, 3, 4, 4)):
    return surgery.load(model.eval(), shape), torch.randn(shape)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_same_masks_as_the_source_under_the_same_seed(mode: str) -> None:
    torch.manual_seed(0)
    model = Block(mode)
    net, x = _net(model)
    (layer,) = [layer for layer in net.layers() if layer.type == "StochasticDepth"]
    assert layer.params == {"p": 0.5, "mode": mode}
    assert "OpaqueCall" not in {layer.type for layer in net.layers()}
    emitted = surgery.to_torch(net)
    with torch.no_grad():
        assert torch.equal(emitted.eval()(x), model.eval()(x)), "the identity in eval"
        model.train(), emitted.train()
        for seed in range(5):
            torch.manual_seed(seed)
            expected = model(x)
            torch.manual_seed(seed)
            assert torch.equal(emitted(x), expected), f"seed {seed}"
    assert not torch.equal(expected, model.eval()(x)), "something was dropped while training"


def test_onnx_is_the_identity_at_inference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Block("row")
    net, x = _net(model)
    session = onnx_session(emit_onnx(net, tmp_path / "m.onnx"))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected, atol=1e-6, rtol=0
    )


def test_a_call_that_ignores_the_mode_stays_the_call_it_was() -> None:
    net, x = _net(ForcedOn())
    assert "StochasticDepth" not in {layer.type for layer in net.layers()}
    torch.manual_seed(3)
    expected = ForcedOn()(x)
    torch.manual_seed(3)
    assert torch.equal(surgery.to_torch(net).eval()(x), expected), "still dropping in eval, as the source does"


def test_caffe_refuses_it_by_name(tmp_path: Path) -> None:
    net, _ = _net(Block("row"))
    layer = next(layer for layer in net.layers() if layer.type == "StochasticDepth")
    with pytest.raises(ModelFormatError, match=f"'{layer.name}' .StochasticDepth. cannot be written to Caffe"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
