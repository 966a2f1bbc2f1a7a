"""torch's chunk / split / unbind become Slice layers: torch out bit for bit, ONNX
(Split, plus a Squeeze per part for unbind) against onnxruntime at two batch sizes and
read back; Caffe takes the plain cuts and refuses unbind by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.emitters.caffe import emit_caffe
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError
from surgery.importers.onnx_model import import_onnx
from surgery.importers.torch_fx import import_torch
from surgery.verify import onnx_session

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-6  # a split moves values, it computes nothing
SHAPE = (2, 4, 3, 5)


class Parts(nn.Module):
    """Cuts the input with ``cut``, scales part i by i + 1 (so a swapped or dropped part
    shows) and concatenates the flattened parts."""

    def __init__(self, cut, count: int) -> None:
        super().__init__()
        self.cut, self.count = cut, count

    def forward(self, x):
        parts = self.cut(x)
        return torch.cat([(parts[i] * (i + 1)).flatten(1) for i in range(self.count)], 1)


# case -> (cut, parts torch returns, the part sizes along the axis, the axis)
CASES = {
    "chunk_method_even": (lambda x: x.chunk(2, dim=1), 2, [2, 2], 1),
    "chunk_uneven": (lambda x: torch.chunk(x, 3, 1), 2, [2, 2], 1),  # torch gives 2 parts of 2, not 3
    "chunk_more_than_size": (lambda x: x.chunk(6, -1), 5, [1] * 5, -1),
    "chunk_one": (lambda x: x.chunk(1, 2), 1, [3], 2),
    "split_int_last_smaller": (lambda x: torch.split(x, 2, dim=-1), 3, [2, 2, 1], -1),
    "split_method_int_kwarg": (lambda x: x.split(split_size=3, dim=1), 2, [3, 1], 1),
    "split_list": (lambda x: x.split([1, 2, 1], 1), 3, [1, 2, 1], 1),
    "split_list_negative_dim": (lambda x: torch.split(x, [4, 1], dim=-1), 2, [4, 1], -1),
    "unbind_method": (lambda x: x.unbind(1), 4, [1] * 4, 1),
    "unbind_negative_dim": (lambda x: torch.unbind(x, dim=-2), 3, [1] * 3, -2),
}


def _net(case: str):
    cut, count, _, _ = CASES[case]
    module = Parts(cut, count)
    return module, import_torch(module, SHAPE)


def _slices(net):
    return [layer for layer in net.layers() if layer.type == "Slice"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_call_is_one_slice_layer_cut_as_torch_cuts(case: str) -> None:
    _, count, sizes, axis = CASES[case]
    _, net = _net(case)
    assert not [layer for layer in net.layers() if layer.type == "OpaqueCall" and "cat" not in layer.name]
    (layer,) = _slices(net)
    assert len(layer.outputs) == count
    shapes = net.shapes()
    squeezed = case.startswith("unbind")
    for top, size in zip(layer.outputs, sizes):
        expected = list(SHAPE)
        if squeezed:
            del expected[axis]
        else:
            expected[axis] = size
        assert shapes[top] == tuple(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_round_trip_is_exact(case: str) -> None:
    module, net = _net(case)
    model = surgery.to_torch(net).eval()
    for batch in (2, 3):
        x = torch.randn(batch, *SHAPE[1:])
        with torch.no_grad():
            assert torch.equal(model(x), module(x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_matches_at_two_batch_sizes_and_reads_back(case: str, tmp_path: Path) -> None:
    module, net = _net(case)
    path = emit_onnx(net, tmp_path / "m.onnx")
    session = onnx_session(path)
    for batch in (2, 3):
        x = torch.randn(batch, *SHAPE[1:])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, module(x).numpy(), atol=ATOL, rtol=0, err_msg=f"batch {batch}")
    again = import_onnx(path)
    (layer,) = _slices(again)
    assert bool(layer.params.get("squeeze")) == case.startswith("unbind")
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(again).eval()(x), module(x))


@pytest.mark.parametrize("case", ["chunk_uneven", "split_list"])
def test_caffe_writes_a_cut_that_opencv_runs(case: str, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    module, net = _net(case)
    prototxt, weights = emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert "slice_point" in prototxt.read_text()
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    x = torch.randn(SHAPE)
    cv_net.setInput(x.numpy())
    np.testing.assert_allclose(cv_net.forward(), module(x).numpy(), atol=ATOL, rtol=0)


def test_caffe_refuses_unbind_by_name(tmp_path: Path) -> None:
    _, net = _net("unbind_method")
    (layer,) = _slices(net)
    with pytest.raises(ModelFormatError, match=rf"'{layer.name}' \(Slice\) cannot be written to Caffe: it removes"):
        emit_caffe(net, tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert not (tmp_path / "m.prototxt").exists()


class WholeTuple(nn.Module):
    def forward(self, x):
        return torch.cat(x.chunk(2, 1), 3)  # the tuple itself is an argument


def test_a_tuple_used_whole_stays_a_call_and_still_matches() -> None:
    module = WholeTuple()
    net = import_torch(module, SHAPE)
    assert not _slices(net)
    x = torch.randn(SHAPE)
    assert torch.equal(surgery.to_torch(net).eval()(x), module(x))


@pytest.mark.parametrize("cut", [lambda x: x.chunk(2, 0), lambda x: torch.split(x, 1, dim=-4)], ids=["chunk", "split"])
def test_a_count_cut_of_axis_0_stays_a_call_that_follows_the_batch(cut) -> None:
    module = Parts(cut, 2)
    net = import_torch(module, SHAPE)
    assert not _slices(net)
    x = torch.randn(4, *SHAPE[1:])  # chunk(2) of 4 is two parts of 2, wherever the net was loaded at 2
    assert torch.equal(surgery.to_torch(net).eval()(x), module(x))


def test_a_list_of_sizes_along_axis_0_is_a_slice() -> None:
    module = Parts(lambda x: x.split([1, 1], 0), 2)  # these sizes, whatever the batch: as the source
    net = import_torch(module, SHAPE)
    assert len(_slices(net)) == 1
    x = torch.randn(SHAPE)
    assert torch.equal(surgery.to_torch(net).eval()(x), module(x))
