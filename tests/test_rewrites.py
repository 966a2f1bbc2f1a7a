"""Graph rewrites: collapse, eltwise gates, BatchNorm folding, replace, fc_to_conv.
Each with parity (or the error bound it reports) and a precondition failure."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_nets import ConvTail, toy_cnn

import surgery
from surgery.errors import ShapeError, SpecError
from surgery.math.batchnorm_fold import fold_batchnorm
from surgery.math.conv_compose import compose_weights, composed_geometry


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _bit_identical_except(model, source, changed: set[str]) -> None:
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        if key in theirs and key.rsplit(".", 1)[0] not in changed:
            assert torch.equal(value, theirs[key]), key


@pytest.mark.parametrize(
    "k1,s1,d1,p1,k2,s2,d2", [(3, 1, 1, 1, 3, 1, 1), (3, 2, 1, 1, 3, 1, 1), (3, 1, 2, 0, 2, 2, 1), (5, 2, 1, 2, 3, 2, 2)]
)
def test_compose_weights_is_exact(k1, s1, d1, p1, k2, s2, d2) -> None:
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(4, 3, k1, k1, generator=g), torch.randn(4, generator=g)
    w2, b2 = torch.randn(5, 4, k2, k2, generator=g), torch.randn(5, generator=g)
    x = torch.randn(2, 3, 23, 23, generator=g)
    pair = F.conv2d(F.conv2d(x, w1, b1, stride=s1, padding=p1, dilation=d1), w2, b2, stride=s2, dilation=d2)
    weight, bias = compose_weights(w1, b1, w2, b2, (s1, s1), (d1, d1), (d2, d2))
    _kernel, stride, pad = composed_geometry(k1, s1, d1, p1, k2, s2, d2, 0)
    assert _rel(F.conv2d(x, weight, bias, stride=stride, padding=pad), pair) <= 1e-5


def test_fold_batchnorm_math() -> None:
    conv = nn.Conv2d(3, 4, 3)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(F.conv2d(x, weight, bias), bn(conv(x))) <= 1e-5


class Pair(nn.Module):
    """conv -> (relu?) -> conv, VGG block1 names, then a head."""

    def __init__(self, relu: bool, pad2: int = 0) -> None:
        super().__init__()
        layers = [("block1_conv1", nn.Conv2d(3, 8, 3, padding=1))]
        if relu:
            layers.append(("block1_relu1", nn.ReLU()))
        layers += [
            ("block1_conv2", nn.Conv2d(8, 8, 3, padding=pad2)),
            ("block1_relu2", nn.ReLU()),
            ("pool", nn.AdaptiveAvgPool2d(1)),
        ]
        self.features = nn.Sequential(OrderedDict(layers))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def test_collapse_exact_without_padding() -> None:
    torch.manual_seed(0)
    source = Pair(relu=False).eval()
    net = surgery.load(source, (2, 3, 12, 12))
    actions = surgery.collapse(net, "features.block1_conv1", "features.block1_conv2", "features.block1_conv12")
    assert actions[0].what == "added" and "exact composition" in actions[0].detail
    assert net.layer("features.block1_conv12").params["kernel"] == (5, 5)
    model = surgery.to_torch(net).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert _rel(model(x), source(x)) <= 1e-5
    _bit_identical_except(model, source, {"features.block1_conv1", "features.block1_conv2"})


def test_collapse_exact_with_padding_reports_the_border() -> None:
    torch.manual_seed(1)
    source = Pair(relu=False, pad2=1).eval()
    net = surgery.load(source, (2, 3, 12, 12))
    with pytest.raises(SpecError, match=r"differs at the borders .*max border deviation") as error:
        surgery.collapse(net, "features.block1_conv1", "features.block1_conv2", "c12")
    assert "accept_border" in str(error.value)
    actions = surgery.collapse(net, "features.block1_conv1", "features.block1_conv2", "c12", accept_border=True)
    assert "interior exact" in actions[0].detail
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        pair = source.features.block1_conv2(source.features.block1_conv1(x))
        ours = surgery.to_torch(net).eval().c12(x)
    assert ours.shape == pair.shape
    assert _rel(ours[..., 2:-2, 2:-2], pair[..., 2:-2, 2:-2]) <= 1e-5  # the interior is exact


def test_collapse_exact_refuses_a_nonlinearity_between() -> None:
    net = surgery.load(Pair(relu=True), (2, 3, 12, 12))
    with pytest.raises(SpecError, match=r"'features.block1_relu1' .ReLU. sits between"):
        surgery.collapse(net, "features.block1_conv1", "features.block1_conv2", "c12")
    assert "features.block1_conv1" in net


def test_collapse_fit_beats_fresh_and_naive_composition() -> None:
    torch.manual_seed(2)
    source = Pair(relu=True).eval()
    shape = (4, 3, 16, 16)
    fitted = surgery.load(source, shape)
    actions = surgery.collapse(fitted, "features.block1_conv1", "features.block1_conv2", "c12", mode="FIT", samples=16)
    reported = float(actions[0].detail.rsplit("relative error ", 1)[1].split()[0])
    fresh = surgery.load(source, shape)
    surgery.collapse(fresh, "features.block1_conv1", "features.block1_conv2", "c12", mode="FRESH", seed=3)
    f = source.features
    naive_w, naive_b = compose_weights(
        f.block1_conv1.weight, f.block1_conv1.bias, f.block1_conv2.weight, f.block1_conv2.bias, (1, 1), (1, 1), (1, 1)
    )
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(99))  # held out
    with torch.no_grad():
        target = f.block1_conv2(f.block1_relu1(f.block1_conv1(x)))
        errors = {
            "fit": _rel2(surgery.to_torch(fitted).eval().c12(x), target),
            "fresh": _rel2(surgery.to_torch(fresh).eval().c12(x), target),
            "naive": _rel2(F.conv2d(x, naive_w, naive_b, padding=1), target),
        }
    assert errors["fit"] < errors["naive"] and errors["fit"] < errors["fresh"], errors
    assert abs(errors["fit"] - reported) < 0.05


def _rel2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fold_batchnorm_op_parity_and_refusal() -> None:
    source = toy_cnn()
    net = surgery.load(source, (2, 3, 16, 16))
    actions = surgery.fold_batchnorm(net, "features.block1_conv1")
    assert "features.block1_bn" not in net and actions[0].what == "derived"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _rel(surgery.to_torch(net).eval()(x), source(x)) <= 1e-5

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    shared = surgery.load(Shared(), (1, 3, 4, 4))
    with pytest.raises(SpecError, match=r"feeds bn .BatchNorm., add .Eltwise."):
        surgery.fold_batchnorm(shared, "conv")


def test_eltwise_gate_with_broadcasting() -> None:
    source = toy_cnn()
    net = surgery.load(source, (2, 3, 16, 16))
    gate = [
        'name: "gate_conv" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 '
        'weight_filler { type: "msra" } }'
    ]
    actions = surgery.eltwise(net, "gate", "features.block2_relu", layers=gate, seed=4)
    assert net.shapes()["gate_conv"] == (2, 1, 8, 8) and net.shapes()["gate"] == (2, 16, 8, 8)
    assert net.layer("features.block2_pool").inputs == ["gate"]
    assert "PROD" in actions[-1].detail
    model = surgery.to_torch(net).eval()
    _bit_identical_except(model, source, {"gate_conv"})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        relu = source.features.block2_relu(
            source.features.block2_conv1(
                source.features.block1_pool(
                    source.features.block1_relu(source.features.block1_bn(source.features.block1_conv1(x)))
                )
            )
        )
        gated = relu * F.conv2d(
            relu, net.layer("gate_conv").blobs["weight"].data, net.layer("gate_conv").blobs["bias"].data
        )
        expected = source.classifier(torch.flatten(source.features.block2_pool(gated), 1))
        assert _rel(model(x), expected) <= 1e-5
    with pytest.raises(SpecError, match="all-zero filler"):
        surgery.eltwise(
            surgery.load(source, (2, 3, 16, 16)),
            "g",
            "features.block2_relu",
            layers=[gate[0].replace('{ type: "msra" }', '{ type: "constant" }')],
        )
    with pytest.raises(ShapeError, match="do not broadcast"):
        surgery.eltwise(
            surgery.load(source, (2, 3, 16, 16)),
            "g",
            "features.block2_relu",
            layers=[gate[0].replace("num_output: 1", "num_output: 3")],
        )


def test_near_identity_gate_starts_close_to_the_original() -> None:
    source = toy_cnn()
    net = surgery.load(source, (2, 3, 16, 16))
    surgery.eltwise(
        net,
        "gate",
        "features.block2_relu",
        near_identity=True,
        layers=['name: "g" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }'],
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert _rel(surgery.to_torch(net).eval()(x), source(x)) < 5e-3


def test_replace_keeps_what_fits() -> None:
    source = toy_cnn()
    net = surgery.load(source, (2, 3, 16, 16))
    actions = surgery.replace(
        net, "features.block2_conv1", 'type: "Convolution" convolution_param { num_output: 16 kernel_size: 5 pad: 2 }'
    )
    assert "kept bias" in actions[0].detail and "new weight" in actions[0].detail
    layer = net.layer("features.block2_conv1")
    assert layer.blobs["weight"].shape == (16, 8, 5, 5)
    assert torch.equal(layer.blobs["bias"].data, source.features.block2_conv1.bias)
    model = surgery.to_torch(net)
    _bit_identical_except(model, source, {"features.block2_conv1"})


def test_fc_to_conv_makes_a_fully_convolutional_net(tmp_path) -> None:
    torch.manual_seed(0)
    net = surgery.load(ConvTail(), (1, 3, 10, 10))
    surgery.append(
        net,
        [
            'name: "fc6" type: "InnerProduct" inner_product_param { num_output: 6 }',
            'name: "relu6" type: "ReLU"',
            'name: "fc7" type: "InnerProduct" inner_product_param { num_output: 5 }',
        ],
    )
    before = surgery.to_torch(net).eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        expected = before(x)
    surgery.fc_to_conv(net, ["fc6", "fc7"])
    assert net.layer("fc6").type == "Convolution" and net.layer("fc6").params["kernel"] == (4, 4)
    with torch.no_grad():
        assert _rel(surgery.to_torch(net).eval()(x).flatten(1), expected) <= 1e-5
    with pytest.raises(SpecError, match="is a ReLU, not an InnerProduct"):
        surgery.fc_to_conv(net, "relu6")


def test_collapse_fit_on_a_calibration_file(tmp_path) -> None:
    """A .npy of input samples: the last quarter is held out to measure the fit; a file
    that does not fit the net's input is refused before anything changes."""
    import numpy as np

    source = Pair(relu=True).eval()
    samples = tmp_path / "calib.npy"
    np.save(samples, np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32))
    net = surgery.load(source, (2, 3, 12, 12))
    actions = surgery.collapse(
        net, "features.block1_conv1", "features.block1_conv2", "c12", mode="FIT", calibration=str(samples)
    )
    assert "relative error" in actions[0].detail and "on 4 held-out calibration inputs" in actions[0].detail
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3, 10, 10), dtype=np.float32))
    net = surgery.load(source, (2, 3, 12, 12))
    with pytest.raises(SpecError, match=r"have shape \(4, 3, 10, 10\); the net's input is \(N, 3, 12, 12\)"):
        surgery.collapse(net, "features.block1_conv1", "features.block1_conv2", "c12", mode="FIT", calibration=str(bad))
    assert "features.block1_conv1" in net and "c12" not in net
