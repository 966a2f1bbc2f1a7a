"""ONNX out and in, checked against onnxruntime with explicit tolerances."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_layer_types import Call
from test_torch_roundtrip import LAYER_CASES, Wrap, _with_random_stats
from torch import nn
from toy_nets import three_heads, toy_cnn

import surgery
from surgery.cli import main
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError, ShapeError, SpecError, SurgeryError
from surgery.importers.onnx_model import import_onnx
from surgery.verify import onnx_session

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-5  # float32, same math in a different runtime

ONNX_CASES = sorted(LAYER_CASES)


def _run_onnx(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


class OnnxAble(nn.Module):
    """cat, +, *, flatten, a module used twice, a ReLU6 clip, a constant parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.act = nn.ReLU()
        self.clip = nn.ReLU6()
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

    def forward(self, x):
        y = torch.cat([self.act(self.a(x)), self.act(self.b(x))], 1)
        y = self.clip(y * self.scale + y * 3) - y
        return torch.flatten(y, 1)


@pytest.mark.parametrize("case", [*ONNX_CASES, "onnxable"])
def test_each_layer_type_onnx_matches_torch(case: str, tmp_path: Path) -> None:
    body, shape = (OnnxAble(), (2, 4, 6, 6)) if case == "onnxable" else LAYER_CASES[case]
    if case == "adaptive":
        shape = (1, 2, 6, 6)  # ONNX has no adaptive pooling: equal windows become a plain pooling
    torch.manual_seed(0)
    net = surgery.load(_with_random_stats(Wrap(body)), shape)
    path = emit_onnx(net, tmp_path / "m.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = surgery.to_torch(net).eval()(x).numpy()
    got = _run_onnx(path, x)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    # and back: the re-imported net computes the same
    again = surgery.to_torch(import_onnx(path)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("size,shape", [((3, 2), (2, 2, 7, 6)), ((7, 7), (1, 3, 2, 2)), ((5, 3), (1, 2, 9, 4))])
def test_uneven_adaptive_average_pooling_is_exact_in_onnx(size, shape, tmp_path: Path) -> None:
    """Windows that do not divide the input (vgg16's 7x7 pool on a small input
    upsamples 2x2): written as two MatMuls with averaging matrices, read back as one
    AdaptivePooling layer."""
    net = surgery.load(Wrap(nn.AdaptiveAvgPool2d(size)), shape)
    path = emit_onnx(net, tmp_path / "a.onnx")
    x = torch.randn(shape)
    expected = nn.functional.adaptive_avg_pool2d(x, size).numpy()
    np.testing.assert_allclose(_run_onnx(path, x)[0], expected, atol=ATOL, rtol=0)
    again = import_onnx(path)
    assert [(x.name, x.type, x.params["output_size"]) for x in again.layers() if x.type != "Input"] == [
        ("body", "AdaptivePooling", list(size))
    ]
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(again).eval()(x).numpy(), expected, atol=ATOL, rtol=0)


def test_uneven_adaptive_max_pooling_has_no_onnx_form(tmp_path: Path) -> None:
    net = surgery.load(Wrap(nn.AdaptiveMaxPool2d((3, 2))), (1, 2, 7, 6))
    with pytest.raises(
        ModelFormatError, match=r"'body' .AdaptivePooling. cannot be written to ONNX: uneven adaptive max pooling"
    ):
        emit_onnx(net, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_names_batch_axis_opset_and_determinism(tmp_path: Path) -> None:
    net = surgery.load(toy_cnn(), (2, 3, 16, 16))
    a = emit_onnx(net, tmp_path / "a.onnx")
    b = emit_onnx(net, tmp_path / "b.onnx", opset=18)
    model = onnx.load(str(a))
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    names = [n.name for n in model.graph.node]
    assert "features.block1_conv1" in names and "classifier.fc2" in names
    assert {"features.block1_conv1.weight", "classifier.fc2.bias"} <= {t.name for t in model.graph.initializer}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert a.read_bytes() == emit_onnx(net, tmp_path / "c.onnx").read_bytes()
    assert onnx.load(str(b)).opset_import[0].version == 18
    out = _run_onnx(a, torch.randn(5, 3, 16, 16))[0]  # any batch size
    assert out.shape == (5, 5)
    with pytest.raises(SurgeryError, match="opset 13 is too old"):
        emit_onnx(net, tmp_path / "old.onnx", opset=13)


class FullyConvolutional(nn.Module):
    """Any input size works: convolutions, then a global pooling before the classifier."""

    def __init__(self, pooled: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooled else nn.Identity()
        self.fc = nn.Linear(4, 2) if pooled else nn.Identity()

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        return self.fc(torch.flatten(y, 1)) if isinstance(self.fc, nn.Linear) else y


@pytest.mark.parametrize("pooled", [True, False])
def test_dynamic_spatial_axes(pooled: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = FullyConvolutional(pooled).eval()
    net = surgery.load(source, (1, 3, 16, 16))
    path = emit_onnx(net, tmp_path / "d.onnx", dynamic_axes={"x": [2, -1]})
    model = onnx.load(str(path))
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(model.graph.input[0]) == ["batch", 3, "x_2", "x_3"]
    output = model.graph.output[0].name
    assert dims(model.graph.output[0]) == (["batch", 2] if pooled else ["batch", 4, f"{output}_2", f"{output}_3"])
    for shape in [(2, 3, 16, 16), (1, 3, 40, 24), (3, 3, 7, 9)]:
        x = torch.randn(shape)
        with torch.no_grad():
            np.testing.assert_allclose(_run_onnx(path, x)[0], source(x).numpy(), atol=ATOL, rtol=0)


def test_dynamic_axes_that_the_graph_fixes_are_refused(tmp_path: Path) -> None:
    """A classifier after a flatten fixes H and W; a pooling that reaches 7x7 with a
    kernel chosen from the input size bakes it in; unknown inputs get a did-you-mean."""
    with pytest.raises(SpecError, match=r"fixed along a requested dynamic axis: layer 'classifier.fc1'"):
        emit_onnx(surgery.load(toy_cnn(), (1, 3, 16, 16)), tmp_path / "a.onnx", dynamic_axes={"x": [2]})
    pooled = surgery.load(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(7)), (1, 3, 14, 14))
    with pytest.raises(SpecError, match=r"node '1' \(AveragePool\) depends on the input's size"):
        emit_onnx(pooled, tmp_path / "b.onnx", dynamic_axes={"input_1": [2, 3]})
    with pytest.raises(SpecError, match="did you mean 'x'"):
        emit_onnx(surgery.load(toy_cnn(), (1, 3, 16, 16)), tmp_path / "c.onnx", dynamic_axes={"X": [2]})
    assert not list(tmp_path.iterdir())


def test_streamed_file_equals_protobuf_serialisation(tmp_path: Path) -> None:
    """The streaming writer produces exactly the bytes protobuf would, for both layouts."""
    from surgery.emitters.onnx_model import build_model

    net = surgery.load(toy_cnn(), (2, 3, 16, 16))
    path = emit_onnx(net, tmp_path / "m.onnx")
    assert path.read_bytes() == build_model(net).SerializeToString()
    external = emit_onnx(net, tmp_path / "e.onnx", external_data=True)
    loaded = onnx.load(str(external))  # loads the external data too
    assert loaded.graph.initializer[0].name == "features.block1_conv1.weight"
    for ours, reference in zip(loaded.graph.initializer, build_model(net).graph.initializer):
        assert numpy_helper.to_array(ours).tobytes() == numpy_helper.to_array(reference).tobytes()


def test_train_only_heads_are_left_out_unless_asked(tmp_path: Path) -> None:
    net = surgery.load(three_heads(), (2, 3, 8, 8))
    deploy = onnx.load(str(emit_onnx(net, tmp_path / "d.onnx")))
    assert [o.name for o in deploy.graph.output] == ["classifier"]
    assert not any(n.name.startswith("aux") for n in deploy.graph.node)
    full = onnx.load(str(emit_onnx(net, tmp_path / "f.onnx", keep_train_branches=True)))
    assert [o.name for o in full.graph.output] == ["classifier", "aux1.classifier", "aux2.classifier"]


class RuntimeSizes(nn.Module):
    """ViT's class token expanded to the batch size (a size known only at run time) and
    a roll: calls with no layer type, beside a typed mean."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 6))

    def forward(self, x):
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        return torch.roll(tokens, 1, dims=2).mean(1)


def test_opaque_layers_reach_onnx_through_torchs_exporter(tmp_path: Path) -> None:
    """Opaque calls are still in the ONNX file, named after their layers, with the batch
    axis still dynamic."""
    net = surgery.load(RuntimeSizes(), (2, 4, 6))
    opaque = {layer.name for layer in net.layers() if layer.type == "OpaqueCall"}
    path = emit_onnx(net, tmp_path / "x.onnx")
    names = {node.name for node in onnx.load(str(path)).graph.node}
    assert {"expand", "roll"} <= opaque and net.layer("mean").type == "Reduction"
    assert {"expand", "roll", "mean"} <= names
    model = surgery.to_torch(net).eval()
    for batch in (2, 5):
        x = torch.randn(batch, 4, 6)
        with torch.no_grad():
            np.testing.assert_allclose(_run_onnx(path, x)[0], model(x).numpy(), atol=ATOL, rtol=0)


def test_an_operator_torchs_exporter_lacks_is_refused_by_name(tmp_path: Path, capsys) -> None:
    net = surgery.load(Wrap(Call(torch.special.erfcx)), (2, 3))
    with pytest.raises(
        ModelFormatError,
        match=r"layer 'special_erfcx' \(OpaqueCall\) cannot be written to ONNX: "
        r"torch's exporter fails on it: UnsupportedOperatorError",
    ):
        emit_onnx(net, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir()), "nothing half-written"
    assert "special_erfcx" not in capsys.readouterr().out


@pytest.mark.parametrize("dynamo", [False, True])
def test_import_torch_onnx_export_files(dynamo: bool, tmp_path: Path) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
    source = toy_cnn()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(source, (x,), str(path), dynamo=True, external_data=False)
        else:
            torch.onnx.export(
                source,
                x,
                str(path),
                dynamo=False,
                opset_version=13,
                input_names=["data"],
                output_names=["logits"],
                dynamic_axes={"data": {0: "n"}, "logits": {0: "n"}},
            )
    net = import_onnx(path, input_shape=(2, 3, 16, 16))
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(net).eval()(x).numpy(), source(x).numpy(), atol=ATOL, rtol=0)


def _helper_model(opset: int, ir: int) -> onnx.ModelProto:
    """A conv net written with onnx.helper in an older opset: asymmetric pads, auto_pad,
    Gemm, MatMul+Add, Identity, Constant, Sum, Div, Clip, PRelu, Reshape, ReduceMean-free."""
    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(v, n)
        for n, v in {
            "c1.w": w(4, 3, 3, 3),
            "c1.b": w(4),
            "c2.w": w(4, 4, 3, 3),
            "slope": np.full((4, 1, 1), 0.1, np.float32),
            "g.w": w(6, 4 * 4 * 4),
            "g.b": w(6),
            "m.w": w(6, 5),
            "m.b": w(5),
            "shape": np.array([2, -1], np.int64),
        }.items()
    ]
    clip_attrs = {"min": 0.0, "max": 6.0} if opset < 11 else {}
    clip_inputs = ["s"] if opset < 11 else ["s", "cmin", "cmax"]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("PRelu", ["c1", "slope"], ["p1"], name="prelu1"),
        helper.make_node("Conv", ["p1", "c2.w"], ["c2"], name="", auto_pad="SAME_UPPER"),
        helper.make_node("Identity", ["c2"], ["c2i"], name="id"),
        helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Div", ["c2i", "two"], ["half"], name="div"),
        helper.make_node("Sum", ["half", "p1"], ["s"], name="sum"),
        helper.make_node("Clip", clip_inputs, ["r6"], name="relu6", **clip_attrs),
        helper.make_node("MaxPool", ["r6"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["mp", "shape"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "g.w", "g.b"], ["g"], name="fc1", transB=1),
        helper.make_node("Relu", ["g"], ["gr"], name="relu"),
        helper.make_node("MatMul", ["gr", "m.w"], ["mm"], name="fc2"),
        helper.make_node("Add", ["mm", "m.b"], ["y"], name="fc2_bias"),
    ]
    if opset >= 11:
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "cmin"),
            numpy_helper.from_array(np.array(6.0, np.float32), "cmax"),
        ]
    graph = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset,ir", [(9, 4), (11, 6), (13, 7)])
def test_import_helper_built_old_opsets(opset: int, ir: int, tmp_path: Path) -> None:
    path = tmp_path / "old.onnx"
    onnx.save(_helper_model(opset, ir), str(path))
    x = torch.randn(2, 3, 16, 16)
    expected = _run_onnx(path, x)[0]
    net = import_onnx(path)
    assert {"conv1", "prelu1", "fc1", "fc2", "relu6"} <= set(net.layer_names())
    assert net.layer("conv1/pad").type == "Pad"  # the asymmetric pads became explicit
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(net).eval()(x).numpy(), expected, atol=1e-4, rtol=1e-5)
    # ONNX -> IR -> ONNX keeps node names and outputs
    again = emit_onnx(net, tmp_path / "again.onnx")
    assert {"conv1", "fc1", "relu6"} <= {n.name for n in onnx.load(str(again)).graph.node}
    np.testing.assert_allclose(_run_onnx(again, x)[0], expected, atol=1e-4, rtol=1e-5)


def test_unsupported_ops_are_listed_with_counts(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Erf", ["x"], ["a"]),
        helper.make_node("Erf", ["a"], ["b"]),
        helper.make_node("Hardmax", ["b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9), str(path))
    with pytest.raises(ModelFormatError, match=r"Erf x2, Hardmax x1"):
        import_onnx(path)


def test_truncated_file_and_wrong_input_shape(tmp_path: Path) -> None:
    path = emit_onnx(surgery.load(toy_cnn(), (2, 3, 16, 16)), tmp_path / "m.onnx")
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ModelFormatError, match=r"not a readable ONNX file|no graph nodes"):
        import_onnx(truncated)
    with pytest.raises(ShapeError, match=r"has shape \['batch'|has shape \[None"):
        import_onnx(path, input_shape=(2, 3, 32, 32))
    assert import_onnx(path, input_shape=(7, 3, 16, 16)).shapes()["classifier.fc2"] == (7, 5)


def test_external_data_round_trip_and_refusal(tmp_path: Path) -> None:
    net = surgery.load(toy_cnn(), (2, 3, 16, 16))
    path = emit_onnx(net, tmp_path / "ext" / "m.onnx", external_data=True)
    assert (tmp_path / "ext" / "m.onnx.data").exists()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = surgery.to_torch(net).eval()(x).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(import_onnx(path)).eval()(x).numpy(), expected, atol=ATOL)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    evil = tmp_path / "ext" / "evil.onnx"
    onnx.save(model, str(evil))
    with pytest.raises(ModelFormatError, match="outside the model's folder"):
        import_onnx(evil)


def test_onnx_source_spec_end_to_end(tmp_path: Path) -> None:
    """A spec whose source is an ONNX file: classifier resize + lr_mult, both outputs."""
    emit_onnx(surgery.load(toy_cnn(), (2, 3, 16, 16)), tmp_path / "src.onnx")
    spec = tmp_path / "s.prototxt"
    spec.write_text(
        'source { onnx { path: "src.onnx" } input_shape: [2, 3, 16, 16] }\nseed: 1\n'
        'edit { classifier { layer: "classifier.fc2" num_output: 3 } }\n'
        'edit { lr { up_to: "features.block2_pool" lr_mult: 0 } }\n'
    )
    result = surgery.apply(spec, tmp_path / "out")
    names = sorted(p.name for p in result.files)
    assert names == ["model.onnx", "model.py", "report.html", "report.json", "weights.pt"]
    model = surgery.load_torch_folder(tmp_path / "out" / "torch").eval()
    assert not model.get_submodule("features.block1_conv1").weight.requires_grad
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_run_onnx(tmp_path / "out" / "model.onnx", x)[0], model(x).numpy(), atol=ATOL)
    assert main(["verify", str(spec), "-q"]) == 0


def test_verify_reports_provider_and_differences(tmp_path: Path, capsys, toy_spec) -> None:
    spec = toy_spec('edit { classifier { layer: "classifier.fc2" num_output: 3 } }')
    assert main(["verify", str(spec), "-q"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime provider: CPUExecutionProvider" in out or "CUDAExecutionProvider" in out
    assert "onnx vs torch" in out and "torch vs source (untouched)  classifier.drop" in out
    assert "ok (allclose)" in out
    assert main(["verify", str(spec), "-q", "--atol", "-1", "--rtol", "0", "--scale-rtol", "-1"]) == 1
    out = capsys.readouterr().out
    assert "verification FAILED" in out and "FAIL: allclose (|a-b| <= -1 + 0*|b|) fails" in out
    assert "scale (max abs <= -1 * max |b|) fails" in out


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze_read_as_reshapes(opset: int, tmp_path: Path) -> None:
    """Squeeze / Unsqueeze with constant axes (an attribute before opset 13, an input
    from 13) are Reshape layers, the batch axis still dynamic."""

    def axes(name: str, values: list[int]) -> tuple[list[str], dict]:
        if opset < 13:
            return [], {"axes": values}
        return [name], {}

    extra_u, attrs_u = axes("u_axes", [1, -1])
    extra_s, attrs_s = axes("s_axes", [-1])
    nodes = [
        helper.make_node("Unsqueeze", ["x", *extra_u], ["u"], name="unsqueeze", **attrs_u),
        helper.make_node("Squeeze", ["u", *extra_s], ["y"], name="squeeze", **attrs_s),
    ]
    initializers = (
        []
        if opset < 13
        else [
            numpy_helper.from_array(np.array([1, -1], np.int64), "u_axes"),
            numpy_helper.from_array(np.array([-1], np.int64), "s_axes"),
        ]
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 3, 4])],
        initializer=initializers,
    )
    path = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), str(path))
    net = import_onnx(path, input_shape=(2, 3, 4))
    assert [(layer.type, layer.params["shape"]) for layer in net.layers() if layer.type != "Input"] == [
        ("Reshape", [0, 1, 3, 4, 1]),
        ("Reshape", [0, 1, 3, 4]),
    ]
    model = surgery.to_torch(net).eval()
    for batch in (2, 1, 5):
        x = torch.randn(batch, 3, 4)
        np.testing.assert_array_equal(model(x).numpy(), _run_onnx(path, x)[0])
