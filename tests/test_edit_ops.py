"""Spec operations: preconditions, effects, report rows, untouched weights bit-identical."""

from __future__ import annotations

import pytest
import torch
from toy_nets import three_heads, toy_cnn

import surgery
from surgery.errors import ShapeError, SpecError, SurgeryError

SHAPE = (2, 3, 16, 16)


def _net():
    return surgery.load(toy_cnn(), SHAPE)


def _untouched_equal(model, source, skip: tuple[str, ...]) -> None:
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        if key in theirs and not key.startswith(skip):
            assert torch.equal(value, theirs[key]), f"{key} changed"


def _snapshot(net):
    return [
        (
            x.name,
            x.type,
            list(x.inputs),
            list(x.outputs),
            dict(x.params),
            {r: (b.shape, b.lr_mult, b.decay_mult, str(b.origin)) for r, b in x.blobs.items()},
        )
        for x in net.layers()
    ], net.outputs


def test_classifier_resize_keeps_everything_else_bit_identical() -> None:
    source = toy_cnn()
    net = surgery.load(source, SHAPE)
    actions = surgery.classifier(
        net, "classifier.fc2", num_output=3, weight_filler={"type": "gaussian", "std": 0.1}, seed=4
    )
    model = surgery.to_torch(net).eval()
    assert model.classifier.fc2.weight.shape == (3, 32)
    _untouched_equal(model, source, ("classifier.fc2",))
    assert actions[0].what == "reinitialised" and "re-initialised" in actions[0].detail
    blob = net.layer("classifier.fc2").blobs["weight"]
    assert blob.origin.kind == "filler" and "gaussian" in blob.origin.detail
    assert 0.05 < blob.data.std().item() < 0.2 and torch.count_nonzero(blob.data) == blob.numel
    # the untouched prefix computes exactly what the source did
    x = torch.randn(SHAPE)
    hidden = {}
    model.classifier.drop.register_forward_hook(lambda m, i, o: hidden.setdefault("ours", o))
    source.classifier.drop.register_forward_hook(lambda m, i, o: hidden.setdefault("theirs", o))
    model(x), source(x)
    assert torch.equal(hidden["ours"], hidden["theirs"])


def test_classifier_renames_three_heads_in_one_operation() -> None:
    net = surgery.load(three_heads(), (2, 3, 8, 8))
    heads = ["classifier", "aux1.classifier", "aux2.classifier"]
    new = ["flowers", "aux1.flowers", "aux2.flowers"]
    surgery.lr(net, layer=heads, lr_mult=3)
    actions = surgery.classifier(net, heads, rename=new, num_output=102, seed=1)
    assert [a.layer for a in actions] == new and all("renamed from" in a.detail for a in actions)
    assert net.outputs == new
    assert all(net.layer(n).blobs["weight"].lr_mult == 3 for n in new), "lr_mult survives the rename"
    out = surgery.to_torch(net).train()(torch.randn(2, 3, 8, 8))
    assert list(out) == new and all(v.shape == (2, 102) for v in out.values())


def test_classifier_refuses_a_non_classifier_layer_and_leaves_the_net_alone() -> None:
    net = _net()
    before = _snapshot(net)
    with pytest.raises(SpecError, match="is a ReLU layer"):
        surgery.classifier(net, "classifier.relu", num_output=3)
    with pytest.raises(SpecError, match=r"did you mean 'classifier.fc2'"):
        surgery.classifier(net, "classifier.fc3", num_output=3)
    with pytest.raises(SpecError, match=r"1 layer.s. but 2 rename"):
        surgery.classifier(net, "classifier.fc2", rename=["a", "b"], num_output=3)
    assert _snapshot(net) == before


def test_resizing_a_hidden_layer_propagates_to_its_consumer() -> None:
    """fc1 32 -> 7: fc2 (behind ReLU and Dropout) is re-initialised (default), sliced, or refused."""
    source = toy_cnn()
    net = _net()
    before = _snapshot(net)
    with pytest.raises(SpecError, match=r"changes the input of 'classifier.fc2'"):
        surgery.classifier(net, "classifier.fc1", num_output=7, propagate="ERROR")
    assert _snapshot(net) == before
    actions = surgery.classifier(net, "classifier.fc1", num_output=7)
    assert [(a.op, a.layer, a.what) for a in actions] == [
        ("classifier", "classifier.fc1", "reinitialised"),
        ("propagate", "classifier.fc2", "reinitialised"),
    ]
    assert net.layer("classifier.fc2").blobs["weight"].shape == (5, 7)
    sliced = _net()
    surgery.classifier(sliced, "classifier.fc1", num_output=40, propagate="SLICE")
    weight = sliced.layer("classifier.fc2").blobs["weight"]
    assert weight.shape == (5, 40) and weight.origin.kind == "resized"
    assert torch.equal(weight.data[:, :32], source.classifier.fc2.weight) and not weight.data[:, 32:].any()


def test_lr_selectors() -> None:
    net = _net()
    assert [a.layer for a in surgery.lr(net, match="features.block1_*", lr_mult=0)] == [
        "features.block1_conv1",
        "features.block1_bn",
    ]
    assert net.layer("features.block1_bn").params["use_global_stats"] is True
    assert [a.layer for a in surgery.lr(net, regex=r"classifier\.fc\d", lr_mult=5)] == [
        "classifier.fc1",
        "classifier.fc2",
    ]
    assert [a.layer for a in surgery.lr(net, up_to="features.block2_pool", decay_mult=0)] == [
        "features.block1_conv1",
        "features.block1_bn",
        "features.block2_conv1",
    ]
    assert net.layer("features.block1_conv1").blobs["weight"].lr_mult == 0
    assert net.layer("features.block2_conv1").blobs["weight"].decay_mult == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"match": "feature.*", "lr_mult": 0}, "matches no layer"),
        ({"regex": "fc", "lr_mult": 0}, "must match a whole name"),
        ({"layer": "classifier.relu", "lr_mult": 0}, "none of which has parameters"),
        ({"up_to": "features.block2_pol", "lr_mult": 0}, "did you mean 'features.block2_pool'"),
        ({"layer": "classifier.fc2"}, "lr sets nothing"),
    ],
)
def test_lr_errors(kwargs, message) -> None:
    net = _net()
    before = _snapshot(net)
    with pytest.raises(SpecError, match=message):
        surgery.lr(net, **kwargs)
    assert _snapshot(net) == before


def test_cut_then_append_a_new_head() -> None:
    source = toy_cnn()
    net = surgery.load(source, SHAPE)
    dropped = surgery.cut(net, "features.block2_pool")
    assert {a.layer for a in dropped} == {
        "flatten",
        "classifier.fc1",
        "classifier.relu",
        "classifier.drop",
        "classifier.fc2",
    }
    assert net.outputs == ["features.block2_pool"]
    added = surgery.append(
        net,
        [
            'name: "head.flat" type: "Flatten"',
            {
                "name": "head.fc",
                "type": "InnerProduct",
                "inner_product_param": {"num_output": 4},
                "param": [{"lr_mult": 10}, {"lr_mult": 20, "decay_mult": 0}],
            },
        ],
        seed=2,
    )
    assert [a.layer for a in added] == ["head.flat", "head.fc"] and net.outputs == ["head.fc"]
    assert net.shapes()["head.fc"] == (2, 4)
    weight = net.layer("head.fc").blobs["weight"]
    assert weight.shape == (4, 256) and weight.lr_mult == 10 and net.layer("head.fc").blobs["bias"].decay_mult == 0
    model = surgery.to_torch(net).eval()
    _untouched_equal(model, source, ("head",))
    feats = torch.randn(SHAPE)
    assert torch.equal(
        model.features.block2_pool(
            model.features.block2_relu(
                model.features.block2_conv1(
                    model.features.block1_pool(
                        model.features.block1_relu(model.features.block1_bn(model.features.block1_conv1(feats)))
                    )
                )
            )
        ),
        source.features(feats),
    )


def test_append_checks_shapes_and_names() -> None:
    net = _net()
    with pytest.raises(ShapeError, match=r"head.conv"):
        surgery.append(
            net, ['name: "head.conv" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }']
        )
    with pytest.raises(SpecError, match="all-zero weight"):
        surgery.append(
            net,
            ['name: "z" type: "InnerProduct" inner_product_param { num_output: 2 weight_filler { type: "constant" } }'],
        )
    with pytest.raises(SurgeryError, match="unknown layer type 'Convolutoin'"):
        surgery.append(net, ['name: "c" type: "Convolutoin"'])
    assert net.outputs == ["classifier.fc2"] and "z" not in net


def test_insert_between_layers() -> None:
    source = toy_cnn()
    net = surgery.load(source, SHAPE)
    surgery.insert(
        net,
        "features.block1_relu",
        ['name: "extra" type: "Convolution" convolution_param { num_output: 8 kernel_size: 1 }'],
        seed=5,
    )
    assert net.layer("features.block1_pool").inputs == ["extra"]
    assert net.layer("extra").inputs == ["features.block1_relu"]
    model = surgery.to_torch(net)
    _untouched_equal(model, source, ("extra",))
    with pytest.raises(SpecError, match="does not read"):
        surgery.insert(net, "features.block1_conv1", ['name: "x2" type: "ReLU"'], before="classifier.fc2")


def test_insert_a_chain_of_layers_and_at_the_output() -> None:
    """The first new layer keeps reading `after`; the old readers (or the net output) move
    to the last one."""
    source = toy_cnn()
    net = surgery.load(source, SHAPE)
    actions = surgery.insert(
        net,
        "features.block2_relu",
        [
            'name: "mix" type: "Convolution" convolution_param { num_output: 16 kernel_size: 1 }',
            'name: "mix_relu" type: "ReLU"',
        ],
        seed=2,
    )
    assert [a.layer for a in actions] == ["mix", "mix_relu"]
    assert net.layer("mix").inputs == ["features.block2_relu"]
    assert net.layer("mix_relu").inputs == ["mix"]
    assert net.layer("features.block2_pool").inputs == ["mix_relu"]
    _untouched_equal(surgery.to_torch(net), source, ("mix",))
    surgery.insert(net, "classifier.fc2", ['name: "probs" type: "Softmax"', 'name: "scaled" type: "Power"'])
    assert net.outputs == ["scaled"]
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        probabilities = surgery.to_torch(net).eval()(x)
    assert torch.allclose(probabilities.sum(1), torch.ones(SHAPE[0]), atol=1e-6)


@pytest.mark.parametrize("policy", ["REINIT", "SLICE"])
def test_resize_propagates_through_batchnorm_to_the_next_conv(policy: str) -> None:
    """block1_conv1 8 -> 12 channels: its BatchNorm and block2_conv1 (behind ReLU and
    pooling) both follow; SLICE keeps the old channels' values and makes the new
    BatchNorm channels the identity."""
    source = toy_cnn()
    net = surgery.load(source, SHAPE)
    actions = surgery.replace(
        net,
        "features.block1_conv1",
        'type: "Convolution" convolution_param { num_output: 12 kernel_size: 3 pad: 1 }',
        propagate=policy,
    )
    assert [a.layer for a in actions] == ["features.block1_conv1", "features.block1_bn", "features.block2_conv1"]
    bn, conv = net.layer("features.block1_bn"), net.layer("features.block2_conv1")
    assert bn.blobs["running_mean"].shape == (12,) and conv.blobs["weight"].shape == (16, 12, 3, 3)
    model = surgery.to_torch(net).eval()
    assert model(torch.randn(*SHAPE)).shape == (SHAPE[0], 5)
    _untouched_equal(model, source, ("features.block1_", "features.block2_conv1"))
    if policy == "SLICE":
        old = source.features.block1_bn
        assert torch.equal(bn.blobs["running_var"].data[:8], old.running_var)
        assert torch.equal(bn.blobs["running_var"].data[8:], torch.ones(4))
        assert torch.equal(bn.blobs["weight"].data[8:], torch.ones(4))
        assert torch.equal(conv.blobs["weight"].data[:, :8], source.features.block2_conv1.weight)
        assert not conv.blobs["weight"].data[:, 8:].any()


def test_remove_bypass_and_branch() -> None:
    net = _net()
    surgery.remove(net, layer="classifier.drop")
    assert net.layer("classifier.fc2").inputs == ["classifier.relu"]
    with pytest.raises(SpecError, match="one-in-one-out"):
        surgery.remove(net, layer="x")
    heads = surgery.load(three_heads(), (2, 3, 8, 8))
    actions = surgery.remove(heads, branch=["aux1.pool", "aux2.pool"])
    assert {a.layer for a in actions} >= {"aux1.classifier", "aux2.classifier"}
    assert heads.outputs == ["classifier"] and not any(x.name.startswith("aux") for x in heads.layers())
    with pytest.raises(SpecError, match="without outputs"):
        surgery.remove(heads, branch="stem")
