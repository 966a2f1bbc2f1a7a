"""nn.MultiheadAttention called as ``attention(q, k, v, need_weights=False)`` becomes a
MultiheadAttention layer: torch out bit for bit (dropout in train mode too, same seed),
the same state_dict keys as the source, ONNX against onnxruntime at opset 17 (the
formula) and 23 (the Attention operator) at two batch sizes; the forms the layer cannot
express stay opaque modules and still run; Caffe refuses it by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_runs import random_inputs, run_onnx
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.torch_fx import import_torch

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-5  # float32: three projections, a softmax and two products, in another runtime
KIND = "MultiheadAttention"
EMBED, HEADS = 8, 2


class SelfAttend(nn.Module):
    """torchvision's ViT call: one blob as query, key and value, the weights dropped."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, **kwargs)

    def forward(self, x):
        y, _ = self.attention(x, x, x, need_weights=False)
        return y


class CrossAttend(nn.Module):
    """Queries from one input, keys and values from another of another length; the
    same module called twice (its second call shares the weights)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, **kwargs)

    def forward(self, x, memory):
        y = self.attention(x, memory, memory, need_weights=False)[0]
        z, _ = self.attention(y, y, y, None, False)
        return z


# case -> (model, input shapes)
CASES = {
    "self": (lambda: SelfAttend(), [(2, 5, EMBED)]),
    "self_no_bias": (lambda: SelfAttend(bias=False), [(2, 5, EMBED)]),
    "self_dropout": (lambda: SelfAttend(dropout=0.25), [(2, 5, EMBED)]),
    "cross_twice": (lambda: CrossAttend(), [(2, 5, EMBED), (2, 7, EMBED)]),
    "cross_twice_no_bias": (lambda: CrossAttend(bias=False), [(2, 5, EMBED), (2, 7, EMBED)]),
}


def _net(case: str):
    build, shapes = CASES[case]
    torch.manual_seed(0)
    module = build().eval()
    net = import_torch(module, shapes)
    types = [layer.type for layer in net.layers()]
    assert "Opaque" not in types and "OpaqueCall" not in types, types
    assert types.count(KIND) == (2 if case.startswith("cross") else 1)
    return module, net, shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_round_trip_is_exact(case: str) -> None:
    module, net, shapes = _net(case)
    model = surgery.to_torch(net).eval()
    for batch in (2, 3):
        xs = random_inputs(shapes, batch)
        with torch.no_grad():
            assert torch.equal(model(*xs), module(*xs))
        assert torch.equal(model(*xs), module(*xs))  # with autograd on: torch's other path


@pytest.mark.parametrize("case", ["self_dropout", "self"])
def test_train_mode_dropout_follows_the_source_with_one_seed(case: str) -> None:
    module, net, shapes = _net(case)
    model = surgery.to_torch(net).train()
    module.train()
    xs = random_inputs(shapes, 3)
    torch.manual_seed(7)
    expected = module(*xs)
    torch.manual_seed(7)
    got = model(*xs)
    assert torch.equal(got, expected)
    if case == "self_dropout":  # the rate is on: train differs from eval
        assert not torch.equal(got, module.eval()(*xs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_keys_and_values_are_the_sources(case: str) -> None:
    module, net, _ = _net(case)
    layer = next(layer for layer in net.layers() if layer.type == KIND)
    assert list(layer.blobs) == [name.split(".", 1)[1] for name in module.state_dict()]
    emitted = surgery.to_torch(net).state_dict()
    assert list(emitted) == list(module.state_dict())
    for key, value in module.state_dict().items():
        assert torch.equal(emitted[key], value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_formula_and_native_operator_match_at_two_batch_sizes(case: str, tmp_path: Path) -> None:
    module, net, shapes = _net(case)
    last = [layer for layer in net.layers() if layer.type == KIND][-1]
    for opset in (17, 23):
        path = emit_onnx(net, tmp_path / f"m{opset}.onnx", opset=opset)
        graph = onnx.load(str(path)).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        ops = [n.op_type for n in graph.node]
        assert ("Attention" in ops) == (opset >= 23) and ("Softmax" in ops) == (opset < 23)
        assert next(n for n in graph.node if n.output[0] == graph.output[0].name).name == last.name
        for batch in (2, 3):
            xs = random_inputs(shapes, batch)
            with torch.no_grad():
                expected = module(*xs).numpy()
            np.testing.assert_allclose(
                run_onnx(path, xs), expected, atol=ATOL, rtol=0, err_msg=f"opset {opset}, batch {batch}"
            )


class Refused(nn.Module):
    """A call (or a module) the layer cannot express."""

    def __init__(self, call: str, **kwargs) -> None:
        super().__init__()
        self.call = call
        self.attention = nn.MultiheadAttention(EMBED, HEADS, **{"batch_first": True, **kwargs})
        self.register_buffer("mask", torch.tril(torch.ones(5, 5)) == 0)

    def forward(self, x):
        if self.call == "weights":
            y, w = self.attention(x, x, x)
            return y + w.sum()
        if self.call == "positional_weights":  # need_weights=True given by position
            y, w = self.attention(x, x, x, None, True)
            return y * w.mean()
        if self.call == "mask":
            return self.attention(x, x, x, need_weights=False, attn_mask=self.mask)[0]
        if self.call == "padding":
            return self.attention(x, x, x, x[..., 0] > 2.0, need_weights=False)[0]
        if self.call == "read_none":
            y, w = self.attention(x, x, x, need_weights=False)
            return y, w
        if self.call == "narrow_keys":
            return self.attention(x, x[..., :6], x[..., :6], need_weights=False)[0]
        return self.attention(x, x, x, need_weights=False)[0]


REFUSED = {
    "weights": {},
    "positional_weights": {},
    "mask": {},
    "padding": {},
    "read_none": {},
    "time_major": {"batch_first": False},
    "narrow_keys": {"kdim": 6, "vdim": 6},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_other_forms_stay_opaque_and_run(case: str) -> None:
    torch.manual_seed(0)
    module = Refused(case, **REFUSED[case]).eval()
    net = import_torch(module, (2, 5, EMBED))
    types = [layer.type for layer in net.layers()]
    assert KIND not in types and types.count("Opaque") == 1, types
    model = surgery.to_torch(net).eval()
    x = torch.randn(3, 5, EMBED)
    with torch.no_grad():
        got, expected = model(x), module(x)
    got = list(got.values()) if isinstance(got, dict) else [got]
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)


class Mixed(nn.Module):
    """One module called in the layer's form and in another (asking for the weights)."""

    def __init__(self, typed_first: bool) -> None:
        super().__init__()
        self.typed_first = typed_first
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)

    def forward(self, x):
        if self.typed_first:
            x = self.attention(x, x, x, need_weights=False)[0]
        y, w = self.attention(x, x, x)
        if not self.typed_first:
            y = self.attention(y, y, y, need_weights=False)[0]
        return y * w.mean()


@pytest.mark.parametrize("typed_first", [True, False], ids=["typed_first", "opaque_first"])
def test_a_module_called_in_both_forms_shares_its_weights(typed_first: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Mixed(typed_first).eval()
    net = import_torch(module, (2, 5, EMBED))
    types = [layer.type for layer in net.layers()]
    assert types.count(KIND) == 1 and types.count("Opaque") == 1, types
    model = surgery.to_torch(net).eval()
    assert list(model.state_dict()) == list(module.state_dict())
    path = emit_onnx(net, tmp_path / "m.onnx", opset=17)
    for batch in (2, 3):
        x = torch.randn(batch, 5, EMBED)
        with torch.no_grad():
            expected = module(x)
            assert torch.equal(model(x), expected)
        np.testing.assert_allclose(run_onnx(path, [x]), expected.numpy(), atol=ATOL, rtol=0)


def test_caffe_refuses_it_by_name(tmp_path: Path) -> None:
    _, net, _ = _net("self")
    with pytest.raises(ModelFormatError, match=f"'attention' .{KIND}. cannot be written to Caffe"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()


def test_torchvisions_vit_has_no_opaque_attention(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.vit_b_16(image_size=32).eval()
    net = import_torch(module, (1, 3, 32, 32))
    layers = list(net.layers())
    assert not [layer.name for layer in layers if layer.type == "Opaque"]
    assert [layer.type for layer in layers].count(KIND) == 12
    getitems = [layer for layer in layers if layer.type == "OpaqueCall" and "getitem" in str(layer.extra["target"])]
    assert not [g.name for g in getitems if net.producer(g.inputs[0]).type == KIND]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), module(x))
