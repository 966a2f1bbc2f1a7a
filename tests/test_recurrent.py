"""Recurrent layer types (LSTM, GRU, RNN): a table of tiny nets, each compared with torch
(the module it came from) and onnxruntime (the ONNX operators, whose gate orders differ
from torch's), with explicit tolerances."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ShapeError
from surgery.importers.onnx_model import import_onnx
from surgery.verify import onnx_session

ATOL = 1e-5  # float32, the same recurrence in another runtime

CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
OPTIONS = {
    "plain": {},
    "two_layers": {"num_layers": 2},
    "bidirectional": {"bidirectional": True},
    "deep_bidirectional": {"num_layers": 2, "bidirectional": True},
    "no_bias": {"bias": False},
}


class Sequencer(nn.Module):
    """A recurrent module on (N, T, F), its outputs and final states all returned."""

    def __init__(self, kind: str, **options) -> None:
        super().__init__()
        self.kind = kind
        self.rnn = CLASSES[kind](6, 5, batch_first=True, **options)
        self.fc = nn.Linear(5 * (2 if options.get("bidirectional") else 1), 3)

    def forward(self, x: torch.Tensor):
        if self.kind == "LSTM":
            y, (h, c) = self.rnn(x)
            return self.fc(y), h, c
        y, h = self.rnn(x)
        return self.fc(y), h


def _outputs(result) -> list[torch.Tensor]:
    return list(result.values()) if isinstance(result, dict) else list(result)


def _run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_imported_recurrent_module_matches_torch_and_onnxruntime(kind: str, option: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Sequencer(kind, **OPTIONS[option]).eval()
    net = surgery.load(source, (2, 7, 6))
    assert net.layer("rnn").type == kind
    x = torch.randn(2, 7, 6)
    with torch.no_grad():
        expected = source(x)
        emitted = _outputs(surgery.to_torch(net).eval()(x))
    for want, got in zip(expected, emitted):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same nn module, the same weights
    path = emit_onnx(net, tmp_path / "m.onnx")
    for want, got in zip(expected, _run_onnx(path, x.numpy())):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=ATOL)


def _appended(kind: str, extra: str = "", features: int = 4) -> surgery.ir.Net:
    """A net whose output is (N, T, F) per-step features, with a new recurrent layer."""
    net = surgery.load(nn.Sequential(OrderedDict(proj=nn.Linear(3, features))), (2, 5, 3))
    surgery.append(net, [f'name: "rnn" type: "{kind}" recurrent_param {{ num_output: 6 {extra} }}'], seed=11)
    return net


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_new_layer_from_spec_syntax_matches_torch_module_and_onnxruntime(
    kind: str, bidirectional: bool, return_sequences: bool, tmp_path: Path
) -> None:
    extra = (
        f"bidirectional: {str(bidirectional).lower()} return_sequences: {str(return_sequences).lower()} num_layers: 2"
    )
    net = _appended(kind, extra)
    d = 2 if bidirectional else 1
    assert net.shape("rnn") == ((2, 5, 6 * d) if return_sequences else (2, 6 * d))
    # An independent torch module with the blobs as its state_dict.
    reference = CLASSES[kind](4, 6, num_layers=2, batch_first=True, bidirectional=bidirectional)
    reference.load_state_dict({role: blob.data for role, blob in net.layer("rnn").blobs.items()})
    linear = nn.Linear(3, 4)
    linear.load_state_dict({role: blob.data for role, blob in net.layer("proj").blobs.items()})
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        y, state = reference(linear(x))
        h = state[0] if kind == "LSTM" else state
        want = y if return_sequences else torch.cat([h[-2], h[-1]], 1) if bidirectional else h[-1]
        got = surgery.to_torch(net).eval()(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    if not return_sequences and not bidirectional:  # the last step's output is the final state
        torch.testing.assert_close(got, y[:, -1], rtol=0, atol=1e-6)
    onnx_out = _run_onnx(emit_onnx(net, tmp_path / "m.onnx"), x.numpy())[0]
    np.testing.assert_allclose(onnx_out, want.numpy(), rtol=0, atol=ATOL)


def test_new_recurrent_fillers_are_seeded_uniform_with_forget_bias_one() -> None:
    net = _appended("LSTM")
    blobs = net.layer("rnn").blobs
    bound = 1 / math.sqrt(6)
    weight = blobs["weight_ih_l0"].data
    assert weight.abs().max() <= bound and weight.abs().min() >= 0 and weight.std() > bound / 4  # non-zero, bounded
    bias_ih = blobs["bias_ih_l0"].data
    torch.testing.assert_close(bias_ih[6:12], torch.ones(6))  # torch's gate order i, f, g, o
    assert bias_ih[:6].abs().sum() == 0 and bias_ih[12:].abs().sum() == 0 and blobs["bias_hh_l0"].data.abs().sum() == 0
    assert "uniform" in str(blobs["weight_hh_l0"].origin)
    assert "forget gate 1" in str(blobs["bias_ih_l0"].origin)  # the report says so
    again = _appended("LSTM")
    assert torch.equal(again.layer("rnn").blobs["weight_hh_l0"].data, blobs["weight_hh_l0"].data)  # seeded
    gru = _appended("GRU").layer("rnn").blobs
    assert gru["bias_ih_l0"].data.abs().sum() == 0  # no forget gate: biases start at 0


def test_spec_bias_filler_replaces_the_forget_gate_default() -> None:
    net = _appended("LSTM", 'bias_filler { type: "constant" value: 0.5 } weight_filler { type: "xavier" }')
    blobs = net.layer("rnn").blobs
    torch.testing.assert_close(blobs["bias_ih_l0"].data, torch.full((24,), 0.5))
    assert "xavier" in str(blobs["weight_ih_l0"].origin)


def test_lr_freezes_recurrent_blobs_by_layer() -> None:
    net = _appended("GRU", "num_layers: 2")
    surgery.lr(net, layer="rnn", lr_mult=0)
    model = surgery.to_torch(net)
    assert not any(p.requires_grad for p in model.rnn.parameters())
    assert all(p.requires_grad for p in model.get_submodule("proj").parameters())


def test_recurrent_layer_on_an_image_is_a_shape_error() -> None:
    net = surgery.load(nn.Conv2d(1, 2, 3), (1, 1, 5, 5))
    before = net.layer_names()
    with pytest.raises(ShapeError, match=r"expects a \(N, T, features\) input") as error:
        surgery.append(net, ['name: "rnn" type: "LSTM" recurrent_param { num_output: 4 }'])
    assert "sequence" in error.value.fix
    assert net.layer_names() == before  # the net is unchanged


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("option", ["plain", "deep_bidirectional", "no_bias"])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_onnx_round_trip_reads_the_operators_back(
    kind: str, option: str, return_sequences: bool, tmp_path: Path
) -> None:
    options = {k: v for k, v in OPTIONS[option].items() if k != "bias"}
    extra = " ".join(f"{k}: {str(v).lower()}" for k, v in options.items())
    extra += f" return_sequences: {str(return_sequences).lower()}"
    if option == "no_bias":
        extra += " bias_term: false"
    net = _appended(kind, extra)
    path = emit_onnx(net, tmp_path / "m.onnx")
    back = import_onnx(path)
    layer = next(x for x in back.layers() if x.type == kind)
    assert {k: layer.params[k] for k in ("num_layers", "bidirectional", "return_sequences", "bias_term")} == {
        k: net.layer("rnn").params[k] for k in ("num_layers", "bidirectional", "return_sequences", "bias_term")
    }
    types = [x.type for x in back.layers()]
    assert types.count(kind) == 1 and not {"Permute", "Reshape", "Slice"} & set(types)  # no stray transposes
    for role, blob in net.layer("rnn").blobs.items():  # torch's gate order again, bit for bit
        assert torch.equal(layer.blobs[role].data, blob.data), role
    x = torch.randn(3, 4, 3)  # another batch and length
    with torch.no_grad():
        want = surgery.to_torch(net).eval()(x)
        got = surgery.to_torch(back).eval()(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    x = torch.randn(3, 5, 3)  # the file's T is fixed (no sequence here)
    with torch.no_grad():
        want = surgery.to_torch(back).eval()(x)
    np.testing.assert_allclose(_run_onnx(path, x.numpy())[0], want.numpy(), rtol=0, atol=ATOL)


def test_a_caffe_lrcn_lstm_is_refused_with_the_convention(tmp_path: Path) -> None:
    """Caffe's own LSTM reads a time-major sequence and a `cont` blob: the error says so
    and points at the `sequence` op."""
    prototxt = tmp_path / "lrcn.prototxt"
    prototxt.write_text("""name: "lrcn"
input: "data"
input_shape { dim: 16 dim: 4 dim: 10 }
input: "cont"
input_shape { dim: 16 dim: 4 }
layer { name: "lstm1" type: "LSTM" bottom: "data" bottom: "cont" top: "lstm1" recurrent_param { num_output: 8 } }
""")
    with pytest.raises(ShapeError) as caught:
        surgery.load(prototxt)
    assert "layer 'lstm1' (LSTM)" in str(caught.value) and "`cont` blob" in str(caught.value)
    assert "`sequence` op" in str(caught.value)
