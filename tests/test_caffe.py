"""Caffe in (and out): fidelity against OpenCV's independent Caffe runtime, Caffe's
weight-copy rules, V1 and V2 forms, GoogLeNet's heads, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_nets import MINI_GOOGLENET, bn_blobs, mini_googlenet_weights, rng_weights, to_v1, write_net

import surgery
from surgery.errors import ModelFormatError, SurgeryError
from surgery.importers.caffe import import_caffe

INPUT = 'input: "data" input_shape { dim: 2 dim: 4 dim: 11 dim: 11 }\n'

# Each net isolates a group of layer types; names follow Caffe habits (in-place tops).
FIDELITY = {
    "conv_bn_scale_pool": (
        INPUT
        + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "maxpool" type: "Pooling" bottom: "conv" top: "maxpool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "avepool" type: "Pooling" bottom: "maxpool" top: "avepool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
""",
        lambda w: {"conv": [w(6, 2, 3, 3), w(6)], "bn": bn_blobs(6), "scale": [w(6) + 1, w(6)]},
    ),
    "lrn_both_regions": (
        INPUT
        + """
layer { name: "across" type: "LRN" bottom: "data" top: "across" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "within" type: "LRN" bottom: "across" top: "within"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
""",
        lambda w: {},
    ),
    "eltwise_concat": (
        INPUT
        + """
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -1 } }
layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "sum" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "b" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "a" top: "cat" }
layer { name: "sig" type: "Sigmoid" bottom: "cat" top: "sig" }
""",
        lambda w: {"a": [w(4, 4, 1, 1), w(4)], "b": [w(4, 4, 1, 1), w(4)]},
    ),
    "deconv_fc_softmax": (
        INPUT
        + """
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "tanh" type: "TanH" bottom: "up" top: "up" }
layer { name: "prelu" type: "PReLU" bottom: "up" top: "up" }
layer { name: "power" type: "Power" bottom: "up" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pow" top: "fc" inner_product_param { num_output: 7 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
        lambda w: {
            "up": [w(4, 2, 4, 4), w(4)],
            "prelu": [np.full(4, 0.2, np.float32)],
            "fc": [w(7, 4 * 22 * 22, scale=0.02), w(7)],
        },
    ),
    "ceil_pool_borders": (
        'input: "data" input_shape { dim: 1 dim: 3 dim: 14 dim: 14 }\n'
        + """
layer { name: "ave" type: "Pooling" bottom: "data" top: "ave" pooling_param { pool: AVE kernel_size: 5 stride: 3 } }
layer { name: "max" type: "Pooling" bottom: "data" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "global" type: "Pooling" bottom: "max" top: "global" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "ave" top: "flat" }
""",
        lambda w: {},
    ),
}


def _opencv(prototxt: Path, caffemodel: Path, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    return list(net.forward(outputs))


@pytest.mark.parametrize("case", sorted(FIDELITY))
def test_fidelity_against_opencv(case: str, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    prototxt, weights = FIDELITY[case]
    text, model = write_net(tmp_path, case, prototxt, weights(rng_weights(3)))
    net = import_caffe(text, model)
    shape = net.input_layers()[0].params["shape"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = net.outputs
    ours = surgery.to_torch(net).eval()
    with torch.no_grad():
        got = ours(torch.from_numpy(x))
    got = [got] if len(outputs) == 1 else list(got.values())
    expected = _opencv(text, model, x, [o.split("@")[0] for o in outputs])
    for blob, a, b in zip(outputs, got, expected):
        b = b.reshape(a.shape)
        tolerance = 1e-4 * max(1.0, float(np.abs(b).max()))
        assert float(np.abs(a.numpy() - b).max()) <= tolerance, f"{case}: {blob}"
    # the deploy ONNX of the imported net agrees too (onnxruntime)
    from surgery.emitters.onnx_model import emit_onnx
    from surgery.verify import onnx_session

    session = onnx_session(emit_onnx(net, tmp_path / "m.onnx"))
    for a, b in zip(got, session.run(None, {session.get_inputs()[0].name: x})):
        assert float(np.abs(a.numpy() - b).max()) <= 1e-4 * max(1.0, float(np.abs(b).max())), case


def test_lrn_k_follows_caffe(tmp_path: Path) -> None:
    """OpenCV ignores LRN's k; Caffe uses it: check k = 2 against Caffe's formula (§2.5)."""
    text, model = write_net(
        tmp_path,
        "lrn",
        INPUT + 'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }\n",
        {},
    )
    x = np.random.default_rng(0).standard_normal((2, 4, 11, 11)).astype(np.float32)
    padded = np.pad(x * x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    expected = x * (2 + 0.5 / 3 * window) ** -0.75
    with torch.no_grad():
        got = surgery.to_torch(import_caffe(text, model)).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_mini_googlenet_heads_losses_and_copy_report(tmp_path: Path) -> None:
    text, model = write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    net = import_caffe(text, model)
    assert net.outputs == ["loss1/classifier", "loss2/classifier", "loss3/classifier"]
    assert net.outputs_for(None) == ["loss3/classifier"]
    assert net.loss_weights == {"loss1/classifier": 0.3, "loss2/classifier": 0.3, "loss3/classifier": 1.0}
    assert net.layer("loss1/fc").phase == "train" and net.layer("inception_4d/output").phase is None
    assert net.input_layers()[0].params["shape"] == (4, 3, 32, 32)  # TRAIN data layer: batch 4, crop 32
    assert "loss1/top-1" not in net  # TEST-only accuracy dropped
    bias = net.layer("loss3/classifier").blobs["bias"]
    assert (bias.lr_mult, bias.decay_mult) == (2, 0)
    assert len(net.weight_copy["copied"]) == 8 and not net.weight_copy["initialised"]
    # in-place ReLU: a new blob version named after the layer, read by the next layer
    assert net.layer("pool1/3x3_s2").inputs == ["conv1/relu_7x7"]
    model_ = surgery.to_torch(net)
    heads = model_.train()(torch.randn(4, 3, 32, 32))
    assert list(heads) == net.outputs
    assert model_.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_renamed_classifier_gets_filler_and_report_lists_ignored(tmp_path: Path) -> None:
    renamed = MINI_GOOGLENET.replace('name: "loss3/classifier"', 'name: "loss3/flowers"')
    _text, model = write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    (tmp_path / "renamed.prototxt").write_text(renamed)
    net = import_caffe(tmp_path / "renamed.prototxt", model)
    assert net.weight_copy["ignored"] == ["loss3/classifier"]
    assert net.weight_copy["initialised"] == ["loss3/flowers"]
    assert net.layer("loss3/flowers").blobs["weight"].origin.kind == "filler"
    assert "xavier" in net.layer("loss3/flowers").blobs["weight"].origin.detail
    assert net.layer("loss1/classifier").blobs["weight"].origin.kind == "source"


def test_shape_mismatch_tells_to_rename_or_resize(tmp_path: Path) -> None:
    _text, model = write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    resized = MINI_GOOGLENET.replace(
        'inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }\nlayer { name: "loss3/loss3"',
        'inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }\nlayer { name: "loss3/loss3"',
    )
    (tmp_path / "resized.prototxt").write_text(resized)
    with pytest.raises(ModelFormatError) as error:
        import_caffe(tmp_path / "resized.prototxt", model)
    text_ = str(error.value)
    assert "loss3/classifier" in text_ and "(10, 10)" in text_ and "(5, 10)" in text_ and "rename or resize" in text_


def test_v1_and_v2_forms_give_the_same_net(tmp_path: Path) -> None:
    v2 = (
        'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } '
        "param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
        'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
        'layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }\n'
    )
    w = rng_weights(5)
    weights = {"conv1": [w(4, 3, 3, 3), w(4)], "fc": [w(3, 36), w(3)]}
    a_text, a_model = write_net(tmp_path / "v2", "net", v2, weights)
    b_text, b_model = write_net(tmp_path / "v1", "net", v2, weights, legacy_blobs=True)
    b_text.write_text(to_v1(v2))
    a, b = import_caffe(a_text, a_model), import_caffe(b_text, b_model)

    def describe(n: surgery.Net) -> list:
        return [
            (
                x.name,
                x.type,
                x.inputs,
                x.outputs,
                x.params,
                {r: (bl.shape, bl.lr_mult, bl.decay_mult) for r, bl in x.blobs.items()},
            )
            for x in n.layers()
        ]

    assert describe(a) == describe(b)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(surgery.to_torch(a).eval()(x), surgery.to_torch(b).eval()(x))


def test_clear_errors(tmp_path: Path) -> None:
    text, model = write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(model.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match=r"not a readable caffemodel|holds no layers|blob holds"):
        import_caffe(text, truncated)
    broken = tmp_path / "broken.prototxt"
    broken.write_text('name: "x"\nlayer { name: "a" type: "ReLU" bottom: "data" top: "a"\n')
    with pytest.raises(ModelFormatError) as error:
        import_caffe(broken)
    assert str(error.value).startswith(f"{broken}:2:")
    unknown = tmp_path / "unknown.prototxt"
    unknown.write_text(INPUT + 'layer { name: "a" type: "Convolutoin" bottom: "data" top: "a" }\n')
    with pytest.raises(ModelFormatError, match="layer types surgery does not support: Convolutoin") as error:
        import_caffe(unknown)
    assert "did you mean 'Convolution'" in str(error.value)


def test_googlenet_spec_end_to_end(tmp_path: Path) -> None:
    """The specs/ GoogLeNet case on a mini GoogLeNet: three heads renamed and resized in
    one operation, a frozen trunk, fast new heads, loss weights in the report."""
    write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    spec = tmp_path / "flowers.prototxt"
    spec.write_text(
        'source { caffe { prototxt: "mini.prototxt" weights: "mini.caffemodel" } }\nseed: 7\n'
        'edit { classifier { layer: "loss1/classifier" layer: "loss2/classifier" layer: "loss3/classifier" '
        'rename: "loss1/flowers" rename: "loss2/flowers" rename: "loss3/flowers" num_output: 5 } }\n'
        'edit { lr { up_to: "inception_4a/output" lr_mult: 0 } }\n'
        'edit { lr { match: "loss*/flowers" lr_mult: 10 decay_mult: 1 } }\n'
    )
    result = surgery.apply(spec, tmp_path / "out")
    report = result.report.as_dict()
    assert report["loss_weights"] == {"loss1/flowers": 0.3, "loss2/flowers": 0.3, "loss3/flowers": 1.0}
    model = surgery.load_torch_folder(tmp_path / "out" / "torch")
    heads = model.train()(torch.randn(4, 3, 32, 32))
    assert list(heads) == ["loss1/flowers", "loss2/flowers", "loss3/flowers"]
    assert all(v.shape == (4, 5) for v in heads.values())
    assert not model.get_submodule("conv1/7x7_s2").weight.requires_grad
    import onnx

    deploy = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [o.name for o in deploy.graph.output] == ["loss3/flowers"]


def test_caffe_source_errors_point_at_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "s.prototxt"
    spec.write_text('source { caffe { prototxt: "missing.prototxt" } }\n')
    with pytest.raises(SurgeryError, match=r"missing.prototxt"):
        surgery.plan(spec)


def test_caffe_round_trip_keeps_outputs(tmp_path: Path) -> None:
    """Caffe -> IR -> Caffe -> IR computes the same, and the prototxt stays readable."""
    from surgery.emitters.caffe import emit_caffe

    text, model = write_net(tmp_path, "mini", MINI_GOOGLENET, mini_googlenet_weights())
    first = import_caffe(text, model, phase="TEST", input_shape=(2, 3, 32, 32))
    prototxt, weights = emit_caffe(first, tmp_path / "deploy.prototxt", tmp_path / "deploy.caffemodel")
    written = prototxt.read_text()
    assert 'name: "loss3/classifier"' in written and "blobs" not in written
    second = import_caffe(prototxt, weights)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(surgery.to_torch(first).eval()(x), surgery.to_torch(second).eval()(x))
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    net.setInput(x.numpy())
    np.testing.assert_allclose(net.forward(), surgery.to_torch(first).eval()(x).detach().numpy(), atol=1e-4)


def test_torch_model_to_caffe_runs_in_opencv(tmp_path: Path) -> None:
    """A torch model (BatchNorm with affine -> BatchNorm + Scale) written as Caffe files."""
    from toy_nets import toy_cnn

    from surgery.emitters.caffe import emit_caffe

    source = toy_cnn()
    net = surgery.load(source, (1, 3, 16, 16))
    prototxt, weights = emit_caffe(net, tmp_path / "toy.prototxt", tmp_path / "toy.caffemodel")
    x = torch.randn(1, 3, 16, 16)
    again = surgery.to_torch(import_caffe(prototxt, weights)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), source(x).numpy(), atol=1e-5)
    cv2 = pytest.importorskip("cv2")
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setInput(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(cv_net.forward(), source(x).numpy(), atol=1e-4)


def test_global_adaptive_pooling_head_to_caffe(tmp_path: Path) -> None:
    """A resnet-style head (AdaptiveAvgPool2d(1), flatten, Linear) becomes a global
    Caffe Pooling; uneven adaptive windows have no Caffe form and say so."""
    from surgery.emitters.caffe import emit_caffe

    torch.manual_seed(3)
    source = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    ).eval()
    net = surgery.load(source, (1, 3, 9, 9))
    prototxt, weights = emit_caffe(net, tmp_path / "head.prototxt", tmp_path / "head.caffemodel")
    assert "global_pooling: true" in prototxt.read_text()
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        expected = source(x).numpy()
    cv2 = pytest.importorskip("cv2")
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setInput(x.numpy())
    np.testing.assert_allclose(cv_net.forward().reshape(expected.shape), expected, atol=1e-4)
    uneven = surgery.load(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((3, 2))), (1, 2, 7, 6))
    with pytest.raises(ModelFormatError, match=r"'0' .AdaptivePooling. cannot be written to Caffe: only global"):
        emit_caffe(uneven, tmp_path / "u.prototxt", tmp_path / "u.caffemodel")


def test_what_caffe_cannot_express_is_named(tmp_path: Path) -> None:
    from test_torch_roundtrip import Wrap

    from surgery.emitters.caffe import emit_caffe

    class Gate(torch.nn.Module):
        def forward(self, x):
            return x * x.mean(1, keepdim=True).sigmoid()

    class Broadcast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return x * self.gate(x)

    with pytest.raises(ModelFormatError, match=r"'mul' \(Eltwise\) cannot be written to Caffe: .*no broadcasting"):
        emit_caffe(surgery.load(Broadcast(), (1, 4, 5, 5)), tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    with pytest.raises(ModelFormatError, match="cannot be written to Caffe"):
        emit_caffe(surgery.load(Wrap(Gate()), (1, 4, 5, 5)), tmp_path / "g.prototxt", tmp_path / "g.caffemodel")
    assert not list(tmp_path.iterdir())
