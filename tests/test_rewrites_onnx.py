"""Graph rewrites, the ONNX side: every rewrite operation applied through the Python API,
then emitted as ONNX and run in onnxruntime (CPUExecutionProvider), compared with the
emitted PyTorch model and, where the operation preserves the function (or changes it in
a known way), with the untouched source module on the same seeded inputs.

Tolerances (float32, the same math in two runtimes): ``max|a - b| / max|b| <= 1e-5``
(``REL``) unless a comment says why a comparison needs a looser bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from test_torch_roundtrip import _with_random_stats
from torch import nn
from toy_nets import ConvTail, toy_cnn

import surgery
from surgery.emitters.onnx_model import emit_onnx

ort = pytest.importorskip("onnxruntime")

REL = 1e-5  # max|a - b| / max|b| for float32 comparisons of the same function
TOY = (2, 3, 16, 16)


# ------------------------------------------------------------------------- helpers
def _x(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run_onnx(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    """The same approach as tests/test_onnx.py's ``_run_onnx``, pinned to the CPU provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a 2-core machine, possibly shared with a benchmark
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert session.get_providers()[0] == "CPUExecutionProvider"
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def _rel(ours: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max()
    assert scale > 0, "the reference is all zeros: the comparison would say nothing"
    return float(np.abs(a - b).max() / scale)


def _assert_close(ours, reference, tol: float = REL, what: str = "") -> None:
    error = _rel(ours, reference)
    assert error <= tol, f"{what}: max|a-b|/max|b| = {error:.3g} > {tol:g}"


def _onnx_vs_torch(net, tmp_path: Path, x: torch.Tensor, name: str = "m.onnx") -> tuple[np.ndarray, onnx.ModelProto]:
    """Emit ``net`` as ONNX, run it in onnxruntime and check it against ``surgery.to_torch(net)``;
    returns onnxruntime's (first) output and the ONNX model. The file's batch axis is
    dynamic: a batch of one must give the first row of the full batch."""
    path = emit_onnx(net, tmp_path / name)
    got = _run_onnx(path, x)
    with torch.no_grad():
        expected = surgery.to_torch(net).eval()(x)
    _assert_close(got[0], expected, what="onnxruntime vs emitted torch")
    _assert_close(_run_onnx(path, x[:1])[0], got[0][:1], what="onnxruntime, batch of 1 vs row 0 of the batch")
    return got[0], onnx.load(str(path))


def _node_names(model: onnx.ModelProto) -> set[str]:
    return {node.name for node in model.graph.node}


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    found = [t for t in model.graph.initializer if t.name == name]
    assert found, f"no initializer {name!r}"
    return onnx.numpy_helper.to_array(found[0])


Tap = Callable[[nn.Module, torch.Tensor, dict], torch.Tensor]


def _toy_forward(source: nn.Module, x: torch.Tensor, taps: dict[str, Tap] | None = None) -> torch.Tensor:
    """ToyCNN's forward, module by module, from the SOURCE modules. ``taps[name](module,
    input, values)`` computes layer ``name`` instead of ``module(input)`` (``module``: the
    source's; ``values``: earlier outputs by layer name, ``"input"`` and ``"flatten"``
    included): the reference for an edited net."""
    taps = taps or {}
    values = {"input": x}
    h = x
    for prefix, sequence in (("features", source.features), ("classifier", source.classifier)):
        if prefix == "classifier":
            h = values["flatten"] = torch.flatten(h, 1)
        for child, module in sequence.named_children():
            name = f"{prefix}.{child}"
            h = values[name] = taps[name](module, h, values) if name in taps else module(h)
    return h


def _blob(net, layer: str, role: str) -> torch.Tensor:
    return net.layer(layer).blobs[role].data


def _recompute(net, layer: str) -> Tap:
    """A tap computing ``layer`` with the net's (new) blobs, by torch.nn.functional."""
    spec = net.layer(layer)
    w = _blob(net, layer, "weight")
    b = spec.blobs["bias"].data if "bias" in spec.blobs else None
    if spec.type == "Convolution":
        p = spec.params
        return lambda m, h, v: F.conv2d(h, w, b, stride=p["stride"], padding=p["pad"], dilation=p["dilation"])
    if spec.type == "InnerProduct":
        return lambda m, h, v: F.linear(h, w, b)
    if spec.type == "BatchNorm":
        mean, var = _blob(net, layer, "running_mean"), _blob(net, layer, "running_var")
        eps = float(spec.params.get("eps", 1e-5))
        return lambda m, h, v: F.batch_norm(h, mean, var, w, b, False, 0.0, eps)
    raise AssertionError(f"no reference for {spec.type}")


def test_toy_forward_is_the_source_forward() -> None:
    source = toy_cnn()
    x = _x(TOY)
    with torch.no_grad():
        assert torch.equal(_toy_forward(source, x), source(x))


# ------------------------------------------------------------------------ collapse
class ConvPair(nn.Module):
    """conv -> (ReLU?) -> conv, VGG block1 names; the net's output is the second conv's."""

    def __init__(self, relu: bool = False, pad2: int = 0) -> None:
        super().__init__()
        layers = [("block1_conv1", nn.Conv2d(3, 8, 3, padding=1))]
        if relu:
            layers.append(("block1_relu1", nn.ReLU()))
        layers.append(("block1_conv2", nn.Conv2d(8, 6, 3, padding=pad2)))
        self.features = nn.Sequential(OrderedDict(layers))

    def forward(self, x):
        return self.features(x)


PAIR = (2, 3, 12, 12)
FIRST, SECOND, MERGED = "features.block1_conv1", "features.block1_conv2", "features.block1_conv12"


def test_collapse_exact_without_padding_matches_the_source(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ConvPair().eval()
    net = surgery.load(source, PAIR)
    surgery.collapse(net, FIRST, SECOND, MERGED)
    x = _x(PAIR, 1)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert MERGED in _node_names(model) and not {FIRST, SECOND} & _node_names(model)
    with torch.no_grad():
        _assert_close(got, source(x), what="onnxruntime vs source (exact composition)")


def test_collapse_exact_accept_border_interior_matches_the_source(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = ConvPair(pad2=1).eval()
    net = surgery.load(source, PAIR)
    actions = surgery.collapse(net, FIRST, SECOND, MERGED, accept_border=True)
    assert "interior exact" in actions[0].detail
    x = _x(PAIR, 2)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    with torch.no_grad():
        expected = source(x).numpy()
    # conv1 (3x3, pad 1) then conv2 (3x3, pad 1): only outputs whose window touches conv2's
    # zero padding (the outermost ring) differ; everything one pixel in is exact.
    _assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], what="onnxruntime vs source, interior")
    assert np.abs(got - expected).max() > 1e-3, "the border should differ (conv1 has a bias)"


@pytest.mark.parametrize("mode", ["FIT", "FRESH"])
def test_collapse_fit_and_fresh(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = ConvPair(relu=True, pad2=1).eval()
    shape = (4, 3, 12, 12)
    net = surgery.load(source, shape)
    actions = surgery.collapse(net, FIRST, SECOND, MERGED, mode=mode, samples=16, seed=3)
    x = _x(shape, 99)  # held out: not the calibration inputs (seeded from the op's seed)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    with torch.no_grad():
        target = source(x).numpy()
    assert got.shape == target.shape
    error = float(np.linalg.norm(got - target) / np.linalg.norm(target))
    if mode == "FIT":
        # A ReLU sits between: no single conv is exact. The bound is the op's own held-out
        # estimate (||a-b|| / ||b||) plus the same slack tests/test_rewrites.py allows for
        # a different sample of inputs.
        reported = float(actions[0].detail.rsplit("relative error ", 1)[1].split()[0])
        assert abs(error - reported) < 0.05, (error, reported)
    else:  # fresh filler weights approximate nothing: just not the source by accident
        assert error > 0.1


# -------------------------------------------------------------------------- eltwise
GATE = (
    'name: "gate_conv" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 '
    'weight_filler { type: "msra" } }'
)


def test_eltwise_prod_gate_broadcasts_over_channels(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.eltwise(net, "gate", "features.block2_relu", layers=[GATE], seed=4)
    assert net.shapes()["gate_conv"] == (2, 1, 8, 8)
    x = _x(TOY, 3)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert {"gate", "gate_conv"} <= _node_names(model)
    w, b = _blob(net, "gate_conv", "weight"), _blob(net, "gate_conv", "bias")
    with torch.no_grad():
        expected = _toy_forward(source, x, {"features.block2_relu": lambda m, h, v: m(h) * F.conv2d(m(h), w, b)})
    _assert_close(got, expected, what="onnxruntime vs source with the gate")


def test_eltwise_prod_near_identity_starts_at_the_source(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.eltwise(
        net,
        "gate",
        "features.block2_relu",
        near_identity=True,
        seed=4,
        layers=['name: "g" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }'],
    )
    x = _x(TOY, 4)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    w, b = _blob(net, "g", "weight"), _blob(net, "g", "bias")
    with torch.no_grad():
        gated = _toy_forward(
            source, x, {"features.block2_relu": lambda m, h, v: m(h) * torch.sigmoid(F.conv2d(m(h), w, b))}
        )
        _assert_close(got, gated, what="onnxruntime vs source with the sigmoid gate")
        # The gate is sigmoid(~6.9 + tiny) ~= 1 - 1e-3 by design, not 1: the output moves by
        # ~1e-3 relative (the bound tests/test_rewrites.py uses for the same edit).
        _assert_close(got, source(x), tol=5e-3, what="onnxruntime vs the untouched source")


class TwoBranch(nn.Module):
    """A 4-channel and a 1-channel branch of the input, concatenated into a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.relu_a = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv_b, self.relu_b = nn.Conv2d(3, 1, 3, padding=1), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.reference(x)

    def reference(self, x, combine=None):
        """The forward; ``combine(a, b)`` replaces the 4-channel branch (an eltwise's reference)."""
        a, b = self.relu_a(self.conv_a(x)), self.relu_b(self.conv_b(x))
        if combine is not None:
            a = combine(a, b)
        return self.fc(torch.flatten(self.pool(torch.cat([a, b], 1)), 1))


COMBINE = {"SUM": torch.add, "MAX": torch.maximum}


@pytest.mark.parametrize("operation", ["SUM", "MAX"])
def test_eltwise_of_two_existing_blobs_of_the_same_shape(operation: str, tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.eltwise(net, "mix", ["features.block1_relu", "features.block1_bn"], operation=operation)
    assert net.layer("features.block1_pool").inputs == ["mix"]
    x = _x(TOY, 5)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    combine = COMBINE[operation]
    with torch.no_grad():
        expected = _toy_forward(
            source, x, {"features.block1_relu": lambda m, h, v: combine(m(h), v["features.block1_bn"])}
        )
    _assert_close(got, expected, what=f"onnxruntime vs source with relu {operation} bn")


@pytest.mark.parametrize("operation", ["SUM", "MAX"])
def test_eltwise_of_two_existing_blobs_with_broadcasting(operation: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = TwoBranch().eval()
    shape = (2, 3, 8, 8)
    net = surgery.load(source, shape)
    surgery.eltwise(net, "mix", ["relu_a", "relu_b"], operation=operation)
    assert net.shapes()["mix"] == (2, 4, 8, 8)
    x = _x(shape, 6)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    with torch.no_grad():
        expected = source.reference(x, COMBINE[operation])
    _assert_close(got, expected, what=f"onnxruntime vs source with a {operation} b (broadcast)")


# ------------------------------------------------------------------- fold_batchnorm
class FoldNet(nn.Module):
    """Three foldable pairs: conv+BN, bias-free conv+BN, Linear+BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.bn3 = nn.Linear(32, 10), nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc2(F.relu(self.bn3(self.fc1(torch.flatten(x, 1)))))


class FcBn(nn.Module):
    """InnerProduct followed by BatchNorm1d, on a 2-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.fc(x))))


def _fold_case(case: str):
    torch.manual_seed(6)
    if case == "all_pairs":
        return (
            _with_random_stats(FoldNet()).eval(),
            (2, 3, 9, 9),
            None,
            {"conv1", "conv2", "fc1"},
            {"bn1", "bn2", "bn3"},
        )
    if case == "named":
        return toy_cnn(), TOY, "features.block1_conv1", {"features.block1_conv1"}, {"features.block1_bn"}
    return _with_random_stats(FcBn()).eval(), (3, 12), "fc", {"fc"}, {"bn"}  # inner_product


@pytest.mark.parametrize("case", ["all_pairs", "named", "inner_product"])
def test_fold_batchnorm_preserves_the_function(case: str, tmp_path: Path) -> None:
    source, shape, layer, folded_into, gone = _fold_case(case)
    net = surgery.load(source, shape)
    actions = surgery.fold_batchnorm(net, layer)
    assert {a.layer for a in actions if a.what == "derived"} == folded_into
    x = _x(shape, 7)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert not gone & _node_names(model)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    with torch.no_grad():
        _assert_close(got, source(x), what="onnxruntime vs source (BatchNorm folded)")


# ---------------------------------------------------------------------------- replace
def test_replace_by_a_bigger_kernel_keeps_what_fits(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.replace(
        net,
        "features.block2_conv1",
        'type: "Convolution" convolution_param { num_output: 16 kernel_size: 5 pad: 2 }',
        seed=8,
    )
    assert net.layer("features.block2_conv1").blobs["weight"].shape == (16, 8, 5, 5)
    x = _x(TOY, 8)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    # the kept bias reaches the ONNX file bit for bit
    assert np.array_equal(
        _initializer(model, "features.block2_conv1.bias"), source.features.block2_conv1.bias.detach().numpy()
    )
    with torch.no_grad():
        expected = _toy_forward(source, x, {"features.block2_conv1": _recompute(net, "features.block2_conv1")})
    _assert_close(got, expected, what="onnxruntime vs source with the new 5x5 kernel")


# ------------------------------------------------------------------------- fc_to_conv
def test_fc_to_conv_preserves_the_function(tmp_path: Path) -> None:
    torch.manual_seed(9)
    shape = (2, 3, 10, 10)
    net = surgery.load(ConvTail(), shape)
    surgery.append(
        net,
        [
            'name: "fc6" type: "InnerProduct" inner_product_param { num_output: 6 }',
            'name: "relu6" type: "ReLU"',
            'name: "fc7" type: "InnerProduct" inner_product_param { num_output: 5 }',
        ],
        seed=9,
    )
    x = _x(shape, 9)
    before = surgery.to_torch(net).eval()  # the fully connected net is the reference here
    with torch.no_grad():
        expected = before(x)
    got_fc, _ = _onnx_vs_torch(net, tmp_path, x, "fc.onnx")
    _assert_close(got_fc, expected, what="onnxruntime vs torch before fc_to_conv")
    surgery.fc_to_conv(net, ["fc6", "fc7"])
    got, model = _onnx_vs_torch(net, tmp_path, x, "conv.onnx")
    assert got.shape == (2, 5, 1, 1)
    assert {n.op_type for n in model.graph.node if n.name in ("fc6", "fc7")} == {"Conv"}
    _assert_close(got.reshape(2, 5), expected, what="onnxruntime (convolutions) vs the fully connected net")


# ------------------------------------------------------------- classifier resize
RESIZES = {
    # (layer, grow-to for SLICE, shrink-to for REINIT, the layers downstream it changes)
    "fc1_through_relu_dropout": ("classifier.fc1", 40, 7, ["classifier.fc2"]),
    "conv1_through_batchnorm": ("features.block1_conv1", 12, 4, ["features.block1_bn", "features.block2_conv1"]),
    "conv2_through_pool_flatten": ("features.block2_conv1", 24, 10, ["classifier.fc1"]),
}


@pytest.mark.parametrize("policy", ["REINIT", "SLICE"])
@pytest.mark.parametrize("case", list(RESIZES))
def test_classifier_resize_propagates_to_the_next_layer(case: str, policy: str, tmp_path: Path) -> None:
    layer, grown, shrunk, downstream = RESIZES[case]
    source = toy_cnn()
    net = surgery.load(source, TOY)
    size = grown if policy == "SLICE" else shrunk
    kwargs = {"propagate": "SLICE"} if policy == "SLICE" else {}  # REINIT is the default
    actions = surgery.classifier(net, layer, num_output=size, seed=10, **kwargs)
    assert [a.layer for a in actions if a.op == "propagate"] == downstream
    x = _x(TOY, 10)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    assert np.isfinite(got).all()
    with torch.no_grad():
        if policy == "SLICE":
            # The resized layer's first (old-size) outputs feed the downstream layers' kept
            # weights; the new outputs meet zero input weights and add nothing. So the net
            # is the SOURCE with only the resized layer's first outputs replaced.
            w, b = _blob(net, layer, "weight"), _blob(net, layer, "bias")
            old = source.get_submodule(layer).weight.shape[0]
            spec = net.layer(layer)
            if spec.type == "Convolution":
                tap = lambda m, h, v: F.conv2d(h, w[:old], b[:old], padding=spec.params["pad"])  # noqa: E731
            else:
                tap = lambda m, h, v: F.linear(h, w[:old], b[:old])  # noqa: E731
            expected = _toy_forward(source, x, {layer: tap})
        else:  # the resized layer and the layers it changed, from their new blobs
            expected = _toy_forward(source, x, {name: _recompute(net, name) for name in [layer, *downstream]})
    _assert_close(got, expected, what=f"onnxruntime vs source with {layer} resized ({policy})")


# ----------------------------------------------------------------------------- insert
SINGLE_INSERTS = {
    # identity-like new layers: the function is unchanged
    "relu_after_relu": ("features.block2_relu", 'name: "extra.relu" type: "ReLU"'),
    "dropout": ("classifier.relu", 'name: "extra.drop" type: "Dropout" dropout_param { dropout_ratio: 0.3 }'),
    "power_identity": ("features.block1_pool", 'name: "extra.power" type: "Power" power_param { power: 1 scale: 1 }'),
}


@pytest.mark.parametrize("case", list(SINGLE_INSERTS))
def test_insert_one_identity_like_layer(case: str, tmp_path: Path) -> None:
    after, layer = SINGLE_INSERTS[case]
    source = toy_cnn()
    net = surgery.load(source, TOY)
    actions = surgery.insert(net, after, [layer])
    assert len(actions) == 1 and actions[0].what == "added"
    x = _x(TOY, 11)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert actions[0].layer in _node_names(model)
    with torch.no_grad():
        _assert_close(got, source(x), what=f"onnxruntime vs source with {case} inserted")


def test_insert_a_chain_of_two_layers(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    actions = surgery.insert(
        net,
        "features.block2_relu",
        [
            'name: "extra.conv" type: "Convolution" convolution_param { num_output: 16 kernel_size: 1 }',
            'name: "extra.relu" type: "ReLU"',
        ],
        seed=12,
    )
    assert [a.layer for a in actions] == ["extra.conv", "extra.relu"]  # the wiring: test_edit_ops.py
    x = _x(TOY, 12)
    got, _ = _onnx_vs_torch(net, tmp_path, x)
    w, b = _blob(net, "extra.conv", "weight"), _blob(net, "extra.conv", "bias")
    with torch.no_grad():
        expected = _toy_forward(source, x, {"features.block2_relu": lambda m, h, v: F.relu(F.conv2d(m(h), w, b))})
    _assert_close(got, expected, what="onnxruntime vs source with conv+relu inserted")


# ----------------------------------------------------------------------------- remove
def test_remove_bypasses_a_dropout(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.remove(net, layer="classifier.drop")
    assert net.layer("classifier.fc2").inputs == ["classifier.relu"]
    x = _x(TOY, 13)
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert "classifier.drop" not in _node_names(model)
    with torch.no_grad():
        _assert_close(got, source(x), what="onnxruntime vs source without the (eval-time identity) dropout")


class TwoHeads(nn.Module):
    """A main head and an auxiliary head, both returned in every mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 4)
        self.aux_pool = nn.AdaptiveAvgPool2d(2)
        self.aux_fc = nn.Linear(24, 3)

    def forward(self, x):
        y = F.relu(self.stem(x))
        return self.head(torch.flatten(self.pool(y), 1)), self.aux_fc(torch.flatten(self.aux_pool(y), 1))


def test_remove_a_branch(tmp_path: Path) -> None:
    torch.manual_seed(14)
    source = TwoHeads().eval()
    shape = (2, 3, 8, 8)
    net = surgery.load(source, shape)
    assert len(net.outputs) == 2
    x = _x(shape, 14)
    with torch.no_grad():
        main, aux = source(x)
    both = _run_onnx(emit_onnx(net, tmp_path / "both.onnx"), x)
    _assert_close(both[0], main, what="onnxruntime vs source, main head (before)")
    _assert_close(both[1], aux, what="onnxruntime vs source, aux head (before)")
    surgery.remove(net, branch="aux_pool")
    assert len(net.outputs) == 1 and "aux_fc" not in net
    got, model = _onnx_vs_torch(net, tmp_path, x)
    assert len(model.graph.output) == 1 and not {"aux_pool", "aux_fc"} & _node_names(model)
    _assert_close(got, main, what="onnxruntime vs source, the remaining head")


# ------------------------------------------------------------------------ cut, append
def test_cut_then_append_a_new_head(tmp_path: Path) -> None:
    source = toy_cnn()
    net = surgery.load(source, TOY)
    surgery.cut(net, "features.block2_pool")
    x = _x(TOY, 15)
    trunk, _ = _onnx_vs_torch(net, tmp_path, x, "trunk.onnx")
    with torch.no_grad():
        features = source.features(x)
    _assert_close(trunk, features, what="onnxruntime vs source trunk after the cut")
    surgery.append(
        net,
        [
            'name: "head.flat" type: "Flatten"',
            'name: "head.fc" type: "InnerProduct" inner_product_param { num_output: 4 }',
        ],
        seed=15,
    )
    got, model = _onnx_vs_torch(net, tmp_path, x, "head.onnx")
    assert [o.name for o in model.graph.output] == ["head.fc"]
    with torch.no_grad():
        expected = F.linear(torch.flatten(features, 1), _blob(net, "head.fc", "weight"), _blob(net, "head.fc", "bias"))
    _assert_close(got, expected, what="onnxruntime vs source trunk + the new head")
