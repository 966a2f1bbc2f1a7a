"""Index layers from tensor indexing (``x[:, 0]``, ``x[:, :c]``, ``x[..., ::2]``,
``x[:, :, None]``): torch in and out bit for bit at two batch sizes, ONNX against
onnxruntime with a symbolic batch and read back, shapes as torch computes them; an ONNX
Slice with constant bounds reads as one; indexing by a tensor,
of the batch axis or to an empty axis stays a call; Caffe refuses the layer by name."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.onnx_model import import_onnx
from surgery.ir import Layer
from surgery.layers import layer_type
from surgery.layers.index import normalise_index, to_torch_index
from surgery.verify import onnx_session

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-6  # a copy of some elements: onnxruntime should give them back unchanged


class Call(nn.Module):
    """``fn(x)`` as a module, after a linear layer so the indexed tensor is computed."""

    def __init__(self, fn, features: int) -> None:
        super().__init__()
        self.fn = fn
        self.proj = nn.Linear(features, features)

    def forward(self, x):
        return self.fn(self.proj(x))


class Ghost(nn.Module):
    """timm ghostnet's channel prefix after a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.out_chs = 6

    def forward(self, x):
        a = self.primary(x)
        out = torch.cat([a, self.cheap(a)], dim=1)
        return out[:, : self.out_chs, :, :]


# case -> (module, input shape at import, Index layers expected)
CASES = {
    "class_token": (Call(lambda x: x[:, 0], 6), (2, 5, 6), 1),
    "int_negative": (Call(lambda x: x[:, :, -1], 4), (2, 3, 4), 1),
    "int_negative_inner": (Call(lambda x: x[:, -2], 4), (2, 3, 4), 1),
    "ghost_prefix": (Ghost(), (2, 3, 5, 5), 1),
    "prefix_past_the_end": (Call(lambda x: x[:, :100], 4), (2, 3, 4), 1),
    "start": (Call(lambda x: x[:, :, 1:, :], 5), (2, 2, 4, 5), 1),
    "negative_start": (Call(lambda x: x[:, -1:, :], 4), (2, 3, 4), 1),
    "negative_stop": (Call(lambda x: x[:, 1:-1], 4), (2, 5, 4), 1),
    "steps": (Call(lambda x: x[:, ::2, ::2], 3), (2, 7, 6, 3), 1),
    "even_and_odd": (Call(lambda x: torch.stack((x[:, :, :, 0::2], x[:, :, :, 1::2]), dim=4), 6), (2, 2, 3, 6), 2),
    "step_with_bounds": (Call(lambda x: x[:, 1:100:3], 4), (2, 9, 4), 1),
    "none_last": (Call(lambda x: x[:, :, :, None], 5), (2, 3, 4, 5), 1),
    "none_inner": (Call(lambda x: x[:, None], 4), (2, 3, 4), 1),
    "ellipsis_steps": (Call(lambda x: x[..., ::2], 5), (2, 3, 5), 1),
    "ellipsis_int": (Call(lambda x: x[..., 0], 5), (2, 3, 5), 1),
    "ellipsis_none": (Call(lambda x: x[..., None] * 2, 5), (2, 3, 5), 1),
    "mix": (Call(lambda x: x[:, 1, ..., None, 1:5:2], 6), (2, 4, 5, 6), 1),
    "whole": (Call(lambda x: x[:] + 1, 4), (2, 3, 4), 1),
}


def _net(case: str):
    module, shape, count = CASES[case]
    torch.manual_seed(0)
    net = surgery.load(module.eval(), shape)
    types = [layer.type for layer in net.layers()]
    calls = [layer.extra["target"] for layer in net.layers() if layer.type == "OpaqueCall"]
    assert types.count("Index") == count and operator.getitem not in calls, types
    return module, net, shape


def _batch(shape: tuple[int, ...], n: int) -> torch.Tensor:
    return torch.randn((n, *shape[1:]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_round_trip_is_exact_at_two_batch_sizes(case: str) -> None:
    module, net, shape = _net(case)
    emitted = surgery.to_torch(net).eval()
    for n in (shape[0], 5):
        x = _batch(shape, n)
        with torch.no_grad():
            expected = module(x)
            assert torch.equal(emitted(x), expected), n
    assert net.shapes()[net.outputs[0]] == tuple(module(_batch(shape, shape[0])).shape)
    for layer in net.layers():
        if layer.type == "Index":
            assert json.loads(json.dumps(layer.params)) == layer.params  # plain data, for reports and specs


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_onnxruntime_with_a_symbolic_batch(case: str, tmp_path: Path) -> None:
    module, net, shape = _net(case)
    path = emit_onnx(net, tmp_path / "m.onnx")
    session = onnx_session(path)
    for n in (shape[0], 3):
        x = _batch(shape, n)
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=f"batch {n}")
    names = {node.name for node in onnx.load(str(path)).graph.node}
    assert {layer.name for layer in net.layers() if layer.type == "Index"} <= names


def test_the_onnx_form_is_slice_squeeze_unsqueeze(tmp_path: Path) -> None:
    _, net, _ = _net("mix")
    ops = [node.op_type for node in onnx.load(str(emit_onnx(net, tmp_path / "m.onnx"))).graph.node]
    assert ops[-3:] == ["Slice", "Squeeze", "Unsqueeze"]


class Gather(nn.Module):
    """maxvit / levit's relative-position table: indexed by a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("idx", torch.tensor([2, 0, 1, 1]))

    def forward(self, x):
        return x[:, self.idx]


# case -> (module, input shape): calls this layer type leaves as they are
REFUSED = {
    "index_tensor": (Gather(), (2, 3, 4)),
    "batch_int": (Call(lambda x: x[0] + x[1], 4), (2, 3, 4)),
    "batch_slice": (Call(lambda x: x[1:], 4), (3, 2, 4)),
    "batch_step": (Call(lambda x: x[::2, 0], 4), (3, 2, 4)),
    "batch_moved_by_none": (Call(lambda x: x[None], 4), (2, 3, 4)),
    "empty_axis": (Call(lambda x: x[:, 5:], 4), (2, 3, 4)),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_other_indexing_stays_a_call_and_runs(case: str) -> None:
    module, shape = REFUSED[case]
    net = surgery.load(module.eval(), shape)
    calls = [layer for layer in net.layers() if layer.type == "OpaqueCall"]
    assert "Index" not in {layer.type for layer in net.layers()}
    assert calls and all(layer.extra["target"] is operator.getitem for layer in calls)
    x = _batch(shape, shape[0])
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), module(x))


def test_a_negative_step_is_not_read() -> None:
    assert normalise_index((slice(None), slice(None, None, -1)), 2) is None
    assert normalise_index((slice(None), slice(None, None, 0)), 2) is None


@pytest.mark.parametrize(
    "index",
    [
        (slice(None), 0),
        (slice(None), -3),
        (slice(None), slice(2, 1)),
        (slice(None), slice(-100, 100, 4)),
        (slice(None), Ellipsis, None, slice(1, None, 2)),
        (slice(None), None, Ellipsis, None),
        (Ellipsis, 2),
        (slice(None), slice(None, -7)),
        (slice(0, None), slice(3, -1, 2), 1),
        (slice(None), slice(7, 9)),
    ],
)
def test_shapes_are_torch_s(index: tuple) -> None:
    shape = (2, 5, 3, 4)
    items = normalise_index(index, len(shape))
    layer = Layer("i", "Index", inputs=["x"], outputs=["i"], params={"index": items})
    expected = tuple(torch.empty(shape, device="meta")[index].shape)
    assert layer_type("Index").infer_shapes(layer, [shape]) == [expected]
    assert tuple(torch.empty(shape, device="meta")[to_torch_index(items)].shape) == expected


def test_a_bad_index_is_a_shape_error_naming_the_layer() -> None:
    from surgery.errors import ShapeError

    kind = layer_type("Index")
    for items, message in [
        ([[None, None, 1], 4], "index 4 is out of range for axis 1 of size 3"),
        ([0], "indexes the batch axis"),
        ([[None, None, 1], [None, None, 1], [None, None, 1]], "more items than the 2-D input"),
        ([[None, None, 1], [0, 2, -1]], "step > 0"),
    ]:
        layer = Layer("pick", "Index", inputs=["x"], outputs=["pick"], params={"index": items})
        with pytest.raises(ShapeError, match=message) as raised:
            kind.infer_shapes(layer, [(2, 3)])
        assert raised.value.subject == "pick"


def test_caffe_refuses_by_name(tmp_path: Path) -> None:
    _, net, _ = _net("class_token")
    layer = next(layer for layer in net.layers() if layer.type == "Index")
    with pytest.raises(ModelFormatError, match=f"'{layer.name}' .Index. cannot be written to Caffe"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()


@pytest.mark.parametrize("case", ["class_token", "steps", "mix", "negative_start", "prefix_past_the_end"])
def test_onnx_reads_back(case: str, tmp_path: Path) -> None:
    module, net, shape = _net(case)
    again = import_onnx(emit_onnx(net, tmp_path / "m.onnx"))
    assert "Index" in {layer.type for layer in again.layers()}
    emitted = surgery.to_torch(again).eval()
    for n in (shape[0], 3):
        x = _batch(shape, n)
        with torch.no_grad():
            np.testing.assert_allclose(emitted(x).numpy(), module(x).numpy(), atol=ATOL, rtol=0)


def _slice_model(starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> onnx.ModelProto:
    consts = [
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in [("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)]
    ]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="cut")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 6, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_onnx_slice_from_another_exporter_reads_as_index(tmp_path: Path) -> None:
    model = _slice_model([-4, 1], [np.iinfo(np.int64).max, 100], [-1, 1], [2, 3])
    onnx.save(model, tmp_path / "m.onnx")
    net = import_onnx(tmp_path / "m.onnx", (2, 6, 5))
    layer = net.layer("cut")
    assert layer.type == "Index" and layer.params["index"] == [[None, None, 1], [1, 100, 3], [-4, None, 2]]
    x = np.random.default_rng(0).standard_normal((2, 6, 5)).astype(np.float32)
    expected = onnx_session(tmp_path / "m.onnx").run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_array_equal(surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy(), expected)


@pytest.mark.parametrize("bounds", [([0], [1], [0], [1]), ([0], [4], [1], [-1])])
def test_an_onnx_slice_of_the_batch_or_backwards_is_not_read(bounds, tmp_path: Path) -> None:
    onnx.save(_slice_model(*bounds), tmp_path / "m.onnx")
    with pytest.raises(
        ModelFormatError, match=r"'cut' .Slice. on a .* no layer type of surgery computes this form of Slice"
    ):
        import_onnx(tmp_path / "m.onnx", (2, 6, 5))


def test_an_opset_9_slice_with_attributes_reads_as_index(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x"], ["y"], name="cut", starts=[1], ends=[-1], axes=[2])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 6, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4), tmp_path / "m.onnx")
    net = import_onnx(tmp_path / "m.onnx", (2, 6, 5))
    assert net.layer("cut").params["index"] == [[None, None, 1], [None, None, 1], [1, -1, 1]]
    assert net.shapes()["y"] == (2, 6, 3)
