"""F.scaled_dot_product_attention becomes a ScaledDotProductAttention layer: torch out
bit for bit, ONNX against onnxruntime at two batch sizes, as its formula at opset 17 and
as the Attention operator at opset 23 (read back as the layer); calls the layer cannot
express stay calls; Caffe refuses it by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx_runs import random_inputs, run_onnx
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.onnx_model import import_onnx
from surgery.importers.torch_fx import import_torch

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-5  # float32 softmax and two products, in another runtime
KIND = "ScaledDotProductAttention"


class Attend(nn.Module):
    """The call on the model's inputs (query, key, value)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.kwargs)


class Positional(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, None, 0.0, True, scale=0.5)


class TimmBlock(nn.Module):
    """timm's attention block in small: one projection cut into heads of q, k, v."""

    def __init__(self, heads: int = 2, dim: int = 8) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv = nn.Linear(dim, dim * 3)

    def forward(self, x):
        n, length, _ = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0)
        return x.transpose(1, 2).reshape(n, length, self.dim)


FOUR = [(2, 2, 5, 4), (2, 2, 6, 4), (2, 2, 6, 3)]  # (N, heads, L, E), keys of another length, values of another width
THREE = [(2, 5, 4), (2, 6, 4), (2, 6, 4)]
# case -> (module, input shapes, ONNX's Attention operator at opset 23)
CASES = {
    "4d_default_scale": (Attend(), FOUR, True),
    "4d_explicit_scale": (Attend(scale=0.3), FOUR, True),
    "4d_causal": (Attend(is_causal=True), FOUR, True),
    "4d_causal_more_queries": (Attend(is_causal=True), [(2, 2, 6, 4), (2, 2, 4, 4), (2, 2, 4, 4)], True),
    "4d_timm_kwargs": (Attend(attn_mask=None, dropout_p=0.0), FOUR, True),
    "3d_one_head": (Attend(), THREE, True),
    "3d_causal_scale_positional": (Positional(), THREE, True),
    "heads_broadcast": (Attend(), [(2, 3, 5, 4), (2, 1, 6, 4), (2, 1, 6, 4)], False),
    "5d": (Attend(is_causal=True), [(2, 2, 2, 5, 4), (2, 2, 2, 5, 4), (2, 2, 2, 5, 4)], False),
}


def _net(case: str):
    module, shapes, _ = CASES[case]
    net = import_torch(module, shapes)
    assert [layer.type for layer in net.layers()] == ["Input"] * 3 + [KIND]
    return module, net, shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_round_trip_is_exact(case: str) -> None:
    module, net, shapes = _net(case)
    model = surgery.to_torch(net).eval()
    for batch in (2, 3):
        xs = random_inputs(shapes, batch)
        with torch.no_grad():
            assert torch.equal(model(*xs), module(*xs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_formula_and_native_operator_match_at_two_batch_sizes(case: str, tmp_path: Path) -> None:
    module, net, shapes = _net(case)
    layer = next(layer for layer in net.layers() if layer.type == KIND)
    for opset in (17, 23):
        path = emit_onnx(net, tmp_path / f"m{opset}.onnx", opset=opset)
        nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
        native = opset >= 23 and CASES[case][2]
        assert nodes[layer.name] == ("Attention" if native else "MatMul")
        assert ("Softmax" in nodes.values()) != native
        for batch in (2, 3):
            xs = random_inputs(shapes, batch)
            with torch.no_grad():
                expected = module(*xs).numpy()
            np.testing.assert_allclose(
                run_onnx(path, xs), expected, atol=ATOL, rtol=0, err_msg=f"opset {opset}, batch {batch}"
            )


@pytest.mark.parametrize("case", ["4d_causal", "3d_causal_scale_positional", "4d_causal_more_queries"])
def test_the_native_operator_reads_back_as_the_layer(case: str, tmp_path: Path) -> None:
    module, net, shapes = _net(case)
    again = import_onnx(emit_onnx(net, tmp_path / "m.onnx", opset=23))
    (layer,) = [layer for layer in again.layers() if layer.type == KIND]
    assert layer.params["is_causal"]
    xs = random_inputs(shapes, 2)
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(again).eval()(*xs).numpy(), module(*xs).numpy(), atol=ATOL, rtol=0)


def test_the_formula_reads_back_as_plain_layers(tmp_path: Path) -> None:
    module, net, shapes = _net("4d_causal")
    again = import_onnx(emit_onnx(net, tmp_path / "m.onnx", opset=17))
    assert {"MatMul", "Softmax", "Permute"} <= {layer.type for layer in again.layers()}
    xs = random_inputs(shapes, 2)
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(again).eval()(*xs).numpy(), module(*xs).numpy(), atol=ATOL, rtol=0)


def test_timms_block_has_the_layer_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TimmBlock().eval()
    net = import_torch(module, (2, 5, 8))
    assert KIND in {layer.type for layer in net.layers()}
    assert [layer.type for layer in net.layers()].count("Slice") == 1
    path = emit_onnx(net, tmp_path / "m.onnx")
    for batch in (2, 3):
        x = torch.randn(batch, 5, 8)
        with torch.no_grad():
            assert torch.equal(surgery.to_torch(net).eval()(x), module(x))
            np.testing.assert_allclose(run_onnx(path, [x]), module(x).numpy(), atol=ATOL, rtol=0)


class Masked(nn.Module):
    def __init__(self, use_mask: bool = False, **kwargs) -> None:
        super().__init__()
        self.use_mask, self.kwargs = use_mask, kwargs
        self.register_buffer("mask", torch.tril(torch.ones(5, 5, dtype=torch.bool)))

    def forward(self, x):
        mask = self.mask if self.use_mask else None
        return F.scaled_dot_product_attention(x, x, x, attn_mask=mask, **self.kwargs)


@pytest.mark.parametrize("kwargs", [{"use_mask": True}, {"dropout_p": 0.1}], ids=["mask", "dropout"])
def test_a_mask_or_dropout_stays_a_call(kwargs: dict) -> None:
    module = Masked(**kwargs)
    net = import_torch(module, (2, 5, 4))
    assert KIND not in {layer.type for layer in net.layers()}
    calls = [layer for layer in net.layers() if layer.type == "OpaqueCall"]
    assert [c.extra["target"] for c in calls] == [F.scaled_dot_product_attention]


def test_caffe_refuses_it_by_name(tmp_path: Path) -> None:
    _, net, _ = _net("4d_causal")
    layer = next(layer for layer in net.layers() if layer.type == KIND)
    with pytest.raises(ModelFormatError, match=f"'{layer.name}' .{KIND}. cannot be written to Caffe"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()
