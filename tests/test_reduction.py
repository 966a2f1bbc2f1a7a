"""Reduction (``x.mean(dims)``, ``x.sum(dims)``, Caffe's Reduction): typed at torch
import, torch out bit for bit, ONNX at both axes forms (attribute at opset 17, input at
18) against onnxruntime with a symbolic batch, Caffe in and out where Caffe can write
it, and refusals by name where it cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from caffe_nets import write_net
from google.protobuf import text_format
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError, ShapeError
from surgery.importers.caffe import import_caffe
from surgery.importers.onnx_model import import_onnx
from surgery.importers.torch_fx import import_torch
from surgery.spec.schema import caffe_class
from surgery.verify import onnx_session

ort = pytest.importorskip("onnxruntime")
# float32 sums of at most 60 values near 1 in another runtime: differences are rounding only.
ATOL = RTOL = 1e-6
BATCHES = (2, 5)


class Call(nn.Module):
    """A 1x1 convolution (so the net has weights before the reduction), then ``fn``."""

    def __init__(self, fn, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1) if channels else None
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x) if self.conv is not None else x)


# case -> (fn, channels for a leading 1x1 conv (0: none), input shape after the batch, the reduction's params)
CASES = {
    "mean_list_23": (lambda x: x.mean([2, 3]), 4, (4, 5, 6), ("MEAN", [2, 3], False)),
    "mean_tuple_23_keepdim": (lambda x: x.mean((2, 3), keepdim=True), 4, (4, 5, 6), ("MEAN", [2, 3], True)),
    "mean_1": (lambda x: x.mean(1), 0, (7, 6), ("MEAN", [1], False)),
    "mean_negative": (lambda x: x.mean(-1), 3, (3, 4, 5), ("MEAN", [-1], False)),
    "sum_dim_1": (lambda x: x.sum(dim=1), 0, (2, 4, 3, 3), ("SUM", [1], False)),
    "sum_keepdim_positional": (lambda x: torch.sum(x, (1, -1), True), 3, (3, 4, 5), ("SUM", [1, -1], True)),
    "torch_mean_dim_23": (lambda x: torch.mean(x, dim=(2, 3)), 4, (4, 5, 6), ("MEAN", [2, 3], False)),
}


def _net(case: str):
    fn, channels, shape, _ = CASES[case]
    torch.manual_seed(0)
    module = Call(fn, channels).eval()
    return module, import_torch(module, (BATCHES[0], *shape)), shape


def _input(shape: tuple[int, ...], batch: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32))


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_calls_import_typed_and_emit_exactly(case: str) -> None:
    module, net, shape = _net(case)
    types = [layer.type for layer in net.layers()]
    assert "OpaqueCall" not in types and types.count("Reduction") == 1
    layer = next(layer for layer in net.layers() if layer.type == "Reduction")
    operation, axes, keepdim = CASES[case][3]
    assert (layer.params["operation"], layer.params["axes"], layer.params["keepdim"]) == (operation, axes, keepdim)
    emitted = surgery.to_torch(net).eval()
    with torch.no_grad():
        for batch in BATCHES:  # the layer's parameters do not depend on the batch it was imported at
            x = _input(shape, batch)
            assert torch.equal(emitted(x), module(x)), f"batch {batch}"
    assert net.shapes()[net.outputs[0]] == tuple(module(_input(shape, BATCHES[0])).shape)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_torch_at_two_batch_sizes(case: str, opset: int, tmp_path: Path) -> None:
    module, net, shape = _net(case)
    path = emit_onnx(net, tmp_path / "m.onnx", opset=opset)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch axis is symbolic"
    layer = next(layer for layer in net.layers() if layer.type == "Reduction")
    node = next(n for n in model.graph.node if n.name == layer.name)
    assert node.op_type == ("ReduceMean" if CASES[case][3][0] == "MEAN" else "ReduceSum")
    axes_as_input = node.op_type == "ReduceSum" or opset >= 18
    assert (len(node.input) == 2) == axes_as_input
    assert any(a.name == "axes" for a in node.attribute) != axes_as_input
    with torch.no_grad():
        for batch in BATCHES:
            x = _input(shape, batch)
            np.testing.assert_allclose(
                _run_onnx(path, x), module(x).numpy(), atol=ATOL, rtol=RTOL, err_msg=f"batch {batch}"
            )
    again = import_onnx(path)  # read back: a reduction again (a spatial mean: a global pooling)
    assert {"Reduction", "Pooling"} & {layer.type for layer in again.layers()}
    with torch.no_grad():
        x = _input(shape, BATCHES[0])
        np.testing.assert_allclose(surgery.to_torch(again).eval()(x).numpy(), module(x).numpy(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.mean(),  # a full reduction: over the batch too
        lambda x: x.sum(0),  # over the batch
        lambda x: x.mean((2, 3), dtype=torch.float64),
        lambda x: x.sum([]),  # torch reads an empty list as every axis
    ],
    ids=["full", "batch_axis", "dtype", "empty_dims"],
)
def test_calls_outside_a_per_sample_reduction_stay_calls(fn) -> None:
    module = Call(fn, 0)
    net = import_torch(module, (2, 3, 4, 4))
    assert [layer.type for layer in net.layers()][1:] == ["OpaqueCall"]
    x = _input((3, 4, 4), 2)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net)(x), module(x))


INPUT = 'input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
CAFFE = (
    INPUT
    + """
layer { name: "mean" type: "Reduction" bottom: "data" top: "mean" reduction_param { operation: MEAN axis: 2 coeff: 2 } }
layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" reduction_param { operation: SUM axis: -1 } }
layer { name: "asum" type: "Reduction" bottom: "data" top: "asum" reduction_param { operation: ASUM axis: 1 } }
layer { name: "sumsq" type: "Reduction" bottom: "data" top: "sumsq"
        reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } }
layer { name: "all" type: "Reduction" bottom: "data" top: "all" reduction_param { operation: MEAN } }
"""
)


def _caffe_reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """Caffe's definitions, in float64: reduce every axis from ``axis`` on, times coeff."""
    x = x.astype(np.float64)
    return {
        "mean": 2 * x.mean(axis=(2, 3)),
        "sum": x.sum(axis=3),
        "asum": np.abs(x).sum(axis=(1, 2, 3)),
        "sumsq": 0.5 * (x * x).sum(axis=(1, 2, 3)),
        "all": np.array(x.mean()),
    }


def _layers(prototxt: Path) -> list:
    message = caffe_class("NetParameter")()
    text_format.Parse(prototxt.read_text(), message)
    return [layer for layer in message.layer if layer.type == "Reduction"]


def test_caffe_reductions_compute_caffes_definition_and_round_trip(tmp_path: Path) -> None:
    text, model = write_net(tmp_path, "reductions", CAFFE, {})
    net = import_caffe(text, model)
    assert {layer.name: layer.type for layer in net.layers()}["sumsq"] == "Reduction"
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = _caffe_reference(x)
    with torch.no_grad():
        ours = surgery.to_torch(net).eval()(torch.from_numpy(x))
    assert sorted(ours) == sorted(expected)
    for blob, value in ours.items():
        np.testing.assert_allclose(value.numpy(), expected[blob], atol=1e-5, rtol=1e-6, err_msg=blob)
    for opset in (17, 18):
        path = emit_onnx(net, tmp_path / f"m{opset}.onnx", opset=opset)
        session = onnx_session(path)
        values = session.run(None, {session.get_inputs()[0].name: x})
        for output, value in zip(session.get_outputs(), values):
            np.testing.assert_allclose(value, expected[output.name], atol=1e-5, rtol=1e-6, err_msg=output.name)
    written, _ = emit_caffe(net, tmp_path / "out.prototxt", tmp_path / "out.caffemodel")

    def form(path: Path) -> list:
        return [(m.name, list(m.bottom), list(m.top), str(m.reduction_param)) for m in _layers(path)]

    assert form(written) == form(text)
    again = import_caffe(written, tmp_path / "out.caffemodel")
    assert [(x.name, x.params) for x in again.layers()] == [(x.name, x.params) for x in net.layers()]


@pytest.mark.parametrize("case", ["sum_keepdim_positional", "sum_dim_1"])
def test_caffe_refuses_a_reduction_it_cannot_write(case: str, tmp_path: Path) -> None:
    _, net, _ = _net(case)
    layer = next(layer for layer in net.layers() if layer.type == "Reduction")
    with pytest.raises(
        ModelFormatError,
        match=f"'{layer.name}' .Reduction. cannot be written to Caffe: Caffe's Reduction reduces every axis from one",
    ):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()


def test_caffe_writes_a_torch_tail_reduction(tmp_path: Path) -> None:
    """``x.mean([2, 3])`` on a 4-D input is Caffe's ``axis: 2``."""
    _, net, _ = _net("mean_list_23")
    written, _ = emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    (layer,) = _layers(written)
    assert (layer.reduction_param.operation, layer.reduction_param.axis) == (4, 2)


def test_caffe_writes_a_squeeze_excite_mean_as_global_pooling(tmp_path: Path) -> None:
    """``x.mean((2, 3), keepdim=True)`` on a 4-D input is Caffe's global average pooling."""
    module, net, shape = _net("mean_tuple_23_keepdim")
    written, weights = emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    message = caffe_class("NetParameter")()
    text_format.Parse(written.read_text(), message)
    (pooling,) = [layer for layer in message.layer if layer.type == "Pooling"]
    assert pooling.pooling_param.global_pooling and pooling.pooling_param.pool == 1  # AVE
    again = import_caffe(written, weights)
    x = _input(shape, 3)
    with torch.no_grad():
        np.testing.assert_allclose(surgery.to_torch(again).eval()(x).numpy(), module(x).numpy(), atol=ATOL, rtol=RTOL)


def test_spec_layers_write_reductions_in_caffe_syntax() -> None:
    torch.manual_seed(0)
    module = Call(lambda x: x, 4)
    net = surgery.load(module, (2, 4, 5, 6))
    surgery.append(
        net,
        [
            'name: "gap" type: "Reduction" reduction_param { operation: MEAN axis: 2 }',
            'name: "fc" type: "InnerProduct" inner_product_param { num_output: 3 }',
        ],
    )
    assert net.shapes()["gap"] == (2, 4) and net.shapes()["fc"] == (2, 3)
    x = _input((4, 5, 6), 2)
    emitted = surgery.to_torch(net).eval()
    with torch.no_grad():
        expected = emitted.fc(module(x).mean((2, 3)))
        assert torch.equal(emitted(x), expected)


@pytest.mark.parametrize(
    "param, error, message",
    [
        ("operation: MEAN axis: 4", ShapeError, "axis 4 is out of range for a 4-D input"),
        ("operation: SUM axis: -5", ShapeError, "axis -5 is out of range"),
        ("operation: SUM coeff: inf", ModelFormatError, "coeff must be a finite number"),
    ],
)
def test_bad_caffe_reductions_are_refused_by_name(param: str, error: type, message: str, tmp_path: Path) -> None:
    prototxt = (
        INPUT + f'layer {{ name: "bad" type: "Reduction" bottom: "data" top: "bad" reduction_param {{ {param} }} }}\n'
    )
    text, model = write_net(tmp_path, "bad", prototxt, {})
    with pytest.raises(error, match=message) as raised:
        import_caffe(text, model)
    assert "bad" in str(raised.value)


def _onnx_file(path: Path, opset: int, nodes: list, outputs: list[tuple[str, list | None, int]]) -> Path:
    """outputs: (name, the axes input's values or None, the output's rank)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "reductions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 5])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}_{i}" for i in range(rank)])
            for name, _, rank in outputs
        ],
        initializer=[
            helper.make_tensor(f"{name}.axes", TensorProto.INT64, [len(axes)], axes)
            for name, axes, _ in outputs
            if axes is not None
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_onnx_reductions_of_other_exporters_read_as_reductions(opset: int, tmp_path: Path) -> None:
    """Attribute axes (before opset 13 for ReduceSum, before 18 for the others) or an axes
    input; keepdims either way; no axes at all (every axis)."""
    from onnx import helper

    ops = {
        "sum": ("ReduceSum", [1], 0),
        "mean": ("ReduceMean", [-1], 1),
        "l1": ("ReduceL1", [1, 3], 0),
        "sumsq": ("ReduceSumSquare", [2], 1),
        "all": ("ReduceMean", None, 0),
    }
    nodes, outputs = [], []
    for name, (op, axes, keepdims) in ops.items():
        as_input = axes is not None and opset >= (13 if op == "ReduceSum" else 18)
        attrs = {"axes": axes} if axes is not None and not as_input else {}
        nodes.append(
            helper.make_node(
                op, ["x", f"{name}.axes"] if as_input else ["x"], [name], name=name, keepdims=keepdims, **attrs
            )
        )
        rank = 4 if keepdims else 4 - len(axes or range(4))
        outputs.append((name, axes if as_input else None, rank))
    path = _onnx_file(tmp_path / "r.onnx", opset, nodes, outputs)
    net = import_onnx(path, (2, 3, 4, 5))
    assert [layer.type for layer in net.layers()][1:] == ["Reduction"] * len(ops)
    x = _input((3, 4, 5), 2)
    expected = dict(zip(ops, _run_onnx_all(path, x)))
    with torch.no_grad():
        ours = surgery.to_torch(net).eval()(x)
    for name in ops:
        np.testing.assert_allclose(ours[name].numpy(), expected[name], atol=ATOL, rtol=RTOL, err_msg=name)


def _run_onnx_all(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def test_a_spec_reduction_with_a_bad_axis_names_the_layer() -> None:
    net = surgery.load(Call(lambda x: x, 4), (2, 4, 5, 6))
    with pytest.raises(ShapeError, match=r"'gap'.*axis 4 is out of range for a 4-D input") as raised:
        surgery.append(net, ['name: "gap" type: "Reduction" reduction_param { operation: MEAN axis: 4 }'])
    assert raised.value.subject == "gap"
    assert "gap" not in net


def test_a_resize_flows_through_a_spatial_mean_to_the_next_layer() -> None:
    """SLICE: the Linear after ``mean([2, 3])`` keeps the weights of the channels that remain."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean([2, 3]))

    torch.manual_seed(0)
    source = Head()
    net = surgery.load(source, (2, 3, 4, 4))
    surgery.classifier(net, "conv", num_output=4, propagate="SLICE")
    weight = net.layer("fc").blobs["weight"]
    assert weight.shape == (2, 4) and torch.equal(weight.data, source.fc.weight[:, :4])
    assert net.shapes()["fc"] == (2, 2)


def test_a_spatial_mean_leaves_the_image_size_free_in_onnx(tmp_path: Path) -> None:
    """Its axes are constants of the rank only: the file runs at other batch and image sizes."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean([2, 3]))

    torch.manual_seed(0)
    module = Head().eval()
    net = surgery.load(module, (1, 3, 8, 8))
    path = emit_onnx(net, tmp_path / "m.onnx", dynamic_axes={"x": [2, 3]})
    for shape in [(3, 8, 8), (3, 13, 7)]:
        x = _input(shape, 3)
        with torch.no_grad():
            np.testing.assert_allclose(_run_onnx(path, x), module(x).numpy(), atol=ATOL, rtol=RTOL, err_msg=str(shape))
