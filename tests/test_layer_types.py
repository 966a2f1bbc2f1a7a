"""Activation, normalisation and tensor-algebra layer types: torch in and out
bit for bit, ONNX at opset 17 (their decompositions where ONNX has no operator yet)
and at the opset that has their operator, against onnxruntime, and read back; Caffe
refuses them by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.onnx_model import import_onnx
from surgery.layers.attention import attention_shape
from surgery.layers.einsum import einsum_shape
from surgery.layers.matmul import matmul_shape
from surgery.verify import onnx_session

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-5  # float32, the same formula in another runtime (GELU's erf/tanh forms included)


class Call(nn.Module):
    """A functional call as a module (``fn(x)`` or ``fn(x, x')`` for a two-input op)."""

    def __init__(self, fn, linear: int = 0) -> None:
        super().__init__()
        self.fn = fn
        self.proj = nn.Linear(linear, linear) if linear else None

    def forward(self, x):
        return self.fn(x, self.proj(x)) if self.proj is not None else self.fn(x)


class Affine(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.norm = module
        with torch.no_grad():
            for p in module.parameters():
                p.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.norm(x)


# case -> (module, input shape, type expected, the first opset with a native ONNX operator)
CASES = {
    "silu": (nn.SiLU(), (2, 3, 4, 4), "SiLU", 24),
    "silu_functional": (Call(F.silu), (2, 5), "SiLU", 24),
    "gelu": (nn.GELU(), (2, 3, 5), "GELU", 20),
    "gelu_tanh": (nn.GELU(approximate="tanh"), (2, 3, 5), "GELU", 20),
    "gelu_functional_tanh": (Call(lambda x: F.gelu(x, approximate="tanh")), (4, 6), "GELU", 20),
    "mish": (nn.Mish(), (2, 3, 4, 4), "Mish", 18),
    "layernorm": (Affine(nn.LayerNorm(6, eps=1e-6)), (2, 5, 6), "LayerNorm", 17),
    "layernorm_2axes_no_bias": (Affine(nn.LayerNorm((4, 6), bias=False)), (2, 3, 4, 6), "LayerNorm", 17),
    "layernorm_no_affine": (nn.LayerNorm(6, elementwise_affine=False), (3, 6), "LayerNorm", 17),
    "layernorm_functional": (Call(lambda x: F.layer_norm(x, (6,), eps=1e-3)), (2, 4, 6), "LayerNorm", 17),
    "permute": (Call(lambda x: x.permute(0, 2, 3, 1)), (2, 3, 4, 5), "Permute", 17),
    "permute_torch_negative": (Call(lambda x: torch.permute(x, (0, -1, 1))), (2, 3, 4), "Permute", 17),
    "transpose": (Call(lambda x: x.transpose(1, -1)), (2, 3, 4, 5), "Permute", 17),
    "matmul": (Call(lambda a, b: a @ b.transpose(-2, -1), linear=4), (2, 3, 4), "MatMul", 17),
    "matmul_square": (Call(torch.matmul, linear=3), (2, 3, 3), "MatMul", 17),
    "bmm": (Call(lambda a, b: torch.bmm(a.transpose(1, 2), b), linear=4), (2, 3, 4), "MatMul", 17),
    "einsum": (Call(lambda a, b: torch.einsum("bij,bkj->bik", a, b), linear=4), (2, 3, 4), "Einsum", 17),
    "einsum_spaces_upper_list": (
        Call(lambda a, b: torch.einsum("B I D, B J D -> B I J", [a, b]), linear=4),
        (2, 3, 4),
        "Einsum",
        17,
    ),
    "einsum_ellipsis": (Call(lambda x: torch.einsum("...ij->...ji", x)), (2, 3, 4, 5), "Einsum", 17),
    "pad": (Call(lambda x: F.pad(x, (1, 2, 0, 3), value=0.5)), (2, 3, 4, 4), "Pad", 17),
    "pad_last_axis": (Call(lambda x: F.pad(x, (2, 1))), (2, 3, 5), "Pad", 17),
    # negative inputs: the zeros win every window that reaches them (pads past the kernel too)
    "zero_pad_then_maxpool": (
        Call(lambda x: F.max_pool2d(F.pad(-x.abs() - 1, (1, 2, 0, 3)), 3, stride=2, padding=1)),
        (2, 3, 6, 6),
        "Pad",
        17,
    ),
    "view_batch_size": (Call(lambda x: x.view(x.size(0), -1, 2)), (2, 4, 3), "Reshape", 17),
    "unsqueeze": (Call(lambda x: x.unsqueeze(2)), (2, 4, 3), "Reshape", 17),
    "squeeze": (Call(lambda x: torch.squeeze(x, -1)), (2, 4, 1), "Reshape", 17),
    "pad_reflect": (Call(lambda x: F.pad(x, (1, 2, 0, 3), mode="reflect")), (2, 3, 4, 4), "Pad", 17),
    "pad_replicate": (Call(lambda x: F.pad(x, (2, 1), mode="replicate")), (2, 3, 5), "Pad", 17),
    "exp": (Call(torch.exp), (2, 3, 4), "UnaryMath", 17),
    "log_of_abs": (Call(lambda x: (x.abs() + 0.5).log()), (2, 3, 4), "UnaryMath", 17),
    "sign": (Call(torch.sign), (2, 5), "UnaryMath", 17),
    "elu": (nn.ELU(alpha=0.5), (2, 3, 4, 4), "UnaryMath", 17),
    "selu": (nn.SELU(), (2, 3, 4), "UnaryMath", 17),
    "softplus": (nn.Softplus(), (2, 3, 4), "UnaryMath", 17),
    "softsign": (Call(F.softsign), (2, 6), "UnaryMath", 17),
    "log_softmax": (nn.LogSoftmax(dim=1), (2, 5, 3), "Softmax", 17),
    "log_softmax_functional": (Call(lambda x: F.log_softmax(x, -1)), (2, 3, 6), "Softmax", 17),
    "conv1d": (
        nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)),
        (2, 4, 11),
        "Convolution",
        17,
    ),
    "conv3d": (
        nn.Sequential(nn.Conv3d(3, 4, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))),
        (2, 3, 4, 7, 7),
        "Convolution",
        17,
    ),
    "maxpool1d": (nn.MaxPool1d(3, stride=2, padding=1, dilation=1, ceil_mode=True), (2, 3, 10), "Pooling", 17),
    "avgpool3d": (nn.AvgPool3d((2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (2, 3, 4, 7, 7), "Pooling", 17),
    "maxpool3d_functional": (Call(lambda x: F.max_pool3d(x, 2)), (2, 3, 4, 6, 6), "Pooling", 17),
    "batchnorm3d": (Affine(nn.BatchNorm3d(3)), (2, 3, 4, 5, 5), "BatchNorm", 17),
    "global_avgpool3d": (nn.Sequential(nn.AdaptiveAvgPool3d(1)), (2, 3, 4, 5, 5), "Pooling", 17),
    "global_maxpool1d": (nn.Sequential(nn.AdaptiveMaxPool1d(1)), (2, 3, 7), "Pooling", 17),
    "instance_norm2d": (Affine(nn.InstanceNorm2d(3, affine=True)), (2, 3, 5, 5), "InstanceNorm", 17),
    "instance_norm1d_plain": (nn.Sequential(nn.InstanceNorm1d(4, eps=1e-3)), (2, 4, 9), "InstanceNorm", 17),
    "tile": (Call(lambda x: x.repeat(1, 2, 1, 3)), (2, 3, 4, 5), "Tile", 17),
    "torch_tile": (Call(lambda x: torch.tile(x, (2, 1))), (2, 3, 4), "Tile", 17),
    "pow_of_two_tensors": (Call(lambda a, b: a.abs() ** b, linear=4), (2, 3, 4), "Eltwise", 17),
}


def _net(case: str):
    module, shape, kind, _ = CASES[case]
    torch.manual_seed(0)
    net = surgery.load(module, shape)
    assert kind in {layer.type for layer in net.layers()}
    return module, net, torch.randn(shape)


def _onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_round_trip_is_exact(case: str) -> None:
    module, net, x = _net(case)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), module.eval()(x))
    assert net.shapes()[net.outputs[0]] == tuple(module(x).shape)


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_at_opset_17_and_with_the_native_operator(case: str, tmp_path: Path) -> None:
    module, net, x = _net(case)
    native = CASES[case][3]
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    for opset in sorted({17, native}):
        path = emit_onnx(net, tmp_path / f"m{opset}.onnx", opset=opset)
        np.testing.assert_allclose(_onnx(path, x), expected, atol=ATOL, rtol=0, err_msg=f"opset {opset}")
    names = {n.name for n in onnx.load(str(tmp_path / "m17.onnx")).graph.node}
    kind_layers = [layer.name for layer in net.layers() if layer.type == CASES[case][2]]
    assert set(kind_layers) <= names, "the node computing the layer's output carries the layer's name"
    if native > 17 and case.startswith(("silu", "gelu", "mish")):
        ops = {n.op_type for n in onnx.load(str(tmp_path / "m17.onnx")).graph.node}
        assert CASES[case][2].replace("SiLU", "Swish").replace("GELU", "Gelu") not in ops
    again = import_onnx(tmp_path / f"m{native}.onnx")
    assert CASES[case][2] in {layer.type for layer in again.layers()}
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(again).eval()(x).numpy(), expected, atol=ATOL, rtol=0)


def test_a_zero_pad_before_max_pooling_is_written_so_onnxruntime_keeps_it(tmp_path: Path) -> None:
    """onnxruntime up to 1.31 folds a Pad whose value is all zero bytes into a following
    MaxPool (padded with -inf there): the pad before a max pooling is written as -0.0."""
    net = _net("zero_pad_then_maxpool")[1]
    model = onnx.load(str(emit_onnx(net, tmp_path / "m.onnx")))
    values = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(".value")]
    assert values and all(v == 0 and np.signbit(v).all() for v in values)
    other = surgery.load(Call(lambda x: torch.sigmoid(F.pad(x, (1, 1)))), (1, 3, 5))
    model = onnx.load(str(emit_onnx(other, tmp_path / "c.onnx")))
    values = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(".value")]
    assert values and not any(np.signbit(v).any() for v in values), "any other zero pad is written as 0"


@pytest.mark.parametrize(
    "case",
    ["silu", "gelu", "mish", "layernorm", "permute", "matmul_square", "pad", "einsum", "exp", "log_softmax", "conv3d"],
)
def test_caffe_refuses_by_name(case: str, tmp_path: Path) -> None:
    _, net, _ = _net(case)
    layer = next(layer for layer in net.layers() if layer.type == CASES[case][2])
    with pytest.raises(ModelFormatError, match=f"'{layer.name}' .{layer.type}. cannot be written to Caffe"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()


def test_gelu_with_an_unknown_approximation_is_refused_by_name(tmp_path: Path) -> None:
    _, net, _ = _net("gelu")
    layer = next(layer for layer in net.layers() if layer.type == "GELU")
    layer.params["approximate"] = "sigmoid"
    with pytest.raises(ModelFormatError, match=f"GELU '{layer.name}' has approximate 'sigmoid'"):
        emit_onnx(net, tmp_path / "m.onnx")


def test_layernorm_checks_its_trailing_axes() -> None:
    from surgery.errors import ShapeError

    with pytest.raises(ShapeError, match=r"normalises over trailing axes \[6\], the input is shaped \(2, 5, 7\)"):
        surgery.load(nn.Sequential(nn.LayerNorm(6)), (2, 5, 7))


SHAPE_GRID = [(3,), (4,), (2, 3), (3, 4), (4, 3), (5, 3, 4), (1, 4, 3), (2, 1, 3, 4), (5, 4, 2), (1, 3), (3, 1), (6,)]


def test_matmul_and_broadcast_shape_rules_agree_with_torch_on_every_pair() -> None:
    # the shape rules run without torch (inspect and plan of ONNX models); torch is the reference
    for a in SHAPE_GRID:
        for b in SHAPE_GRID:
            try:
                want = tuple(torch.matmul(torch.empty(a, device="meta"), torch.empty(b, device="meta")).shape)
            except RuntimeError:
                want = None
            assert matmul_shape(a, b) == want, (a, b)
            try:
                broadcast = tuple(torch.broadcast_shapes(a, b))
            except RuntimeError:
                broadcast = None
            try:
                ours = tuple(int(d) for d in np.broadcast_shapes(a, b))
            except ValueError:
                ours = None
            assert ours == broadcast, (a, b)


EINSUMS = [
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk->ik", [(2, 3), (4, 4)]),
    ("ij,jk->ik", [(2, 3, 1), (3, 4)]),
    ("i,i->i", [(3,), (1,)]),
    ("i,i->", [(3,), (3,)]),
    ("ii->i", [(3, 3)]),
    ("ii->i", [(3, 4)]),
    ("...ij,...jk->...ik", [(5, 2, 3), (3, 4)]),
    ("...ij,...jk->...ik", [(5, 2, 3), (6, 3, 4)]),
    ("b...,b->b...", [(2, 3, 4), (2,)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ij->ji", [(2, 3)]),
    ("ij->jk", [(2, 3)]),
    ("i...->...", [(2, 3, 4)]),
    ("ij,ij->ij", [(1, 3), (2, 1)]),
    ("ij,ij->ij", [(0, 3), (1, 3)]),
    ("bij,bjk->bik", [(1, 2, 3), (4, 3, 5)]),
    ("a...b,a...b->a...", [(2, 3, 4, 5), (2, 1, 4, 5)]),
]


@pytest.mark.parametrize(("equation", "shapes"), EINSUMS)
def test_einsum_shape_rule_agrees_with_torch(equation: str, shapes: list[tuple[int, ...]]) -> None:
    try:
        want = tuple(torch.einsum(equation, *(torch.empty(s, device="meta") for s in shapes)).shape)
    except (RuntimeError, ValueError):
        want = None
    try:
        got = einsum_shape(equation, shapes)
    except ValueError:
        got = None
    assert got == want


def test_attention_shape_rule_agrees_with_torch() -> None:
    queries = [(2, 3, 4, 8), (3, 4, 8), (4, 8), (2, 1, 4, 8), (2, 3, 4, 6)]
    keys = [(2, 3, 5, 8), (3, 5, 8), (5, 8), (2, 3, 5, 6), (1, 3, 5, 8)]
    values = [(2, 3, 5, 7), (3, 5, 7), (5, 7), (2, 3, 4, 7), (2, 1, 5, 7)]
    for q in queries:
        for k in keys:
            for v in values:
                meta = (torch.empty(s, device="meta") for s in (q, k, v))
                try:
                    want = tuple(F.scaled_dot_product_attention(*meta).shape)
                except RuntimeError:
                    want = None
                assert attention_shape(q, k, v) == want, (q, k, v)
