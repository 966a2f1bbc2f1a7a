"""What torch's dynamo exporter writes for attention and indexing, read back: the NaN guard
after an attention softmax (dropped where no row can be masked out entirely, kept and
refused by name where one can), and Gather by a constant index (the class token). Each
file is exported here and compared with onnxruntime on it, within 1e-5 of the output's
scale."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import surgery
from surgery.errors import ModelFormatError
from surgery.importers.onnx_model import import_onnx

ort = pytest.importorskip("onnxruntime")


class _Attention(torch.nn.Module):
    """Two-head self-attention as transformers writes it, with a constant mask."""

    def __init__(self, mask: torch.Tensor | None) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 4)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, 2, 8).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(y.transpose(1, 2).reshape(b, n, 16)[:, 0])


def _export(model: torch.nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(shape),), path, input_names=["x"], dynamo=True)
    return path


def _same_as_onnxruntime(path: Path, shape: tuple[int, ...]) -> surgery.Net:
    net = import_onnx(path)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    return net


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


def test_the_guard_after_an_unmasked_softmax_is_dropped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _export(_Attention(torch.ones(5, 5, dtype=torch.bool)), tmp_path / "attention.onnx", (2, 5, 16))
    assert {"IsNaN", "Where", "Gather"} <= _ops(path)  # the guard, and x[:, 0]
    net = _same_as_onnxruntime(path, (2, 5, 16))
    types = {layer.type for layer in net.layers()}
    assert "Softmax" in types and "Index" in types


def test_a_row_masked_out_entirely_reads_as_the_file_computes_it(tmp_path: Path) -> None:
    """The exporter writes a False mask entry as float32's lowest number, not -inf: a row
    masked out entirely gets equal weights, in the file and in the net alike."""
    torch.manual_seed(0)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    path = _export(_Attention(mask), tmp_path / "masked.onnx", (2, 5, 16))
    _same_as_onnxruntime(path, (2, 5, 16))


def test_the_guard_stays_where_a_mask_holds_minus_infinity(tmp_path: Path) -> None:
    """The same file with -inf in its mask: a row masked out entirely is NaN before the
    guard, 0 after it. The guard then matters, so it stays, and is refused by name."""
    torch.manual_seed(0)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    model = onnx.load(_export(_Attention(mask), tmp_path / "masked.onnx", (2, 5, 16)))
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    scores = next(node for node in model.graph.node if softmax.input[0] in node.output)
    initializer = next(t for t in model.graph.initializer if t.name in scores.input)
    values = onnx.numpy_helper.to_array(initializer).copy()
    values[values < -1e38] = -np.inf
    initializer.CopyFrom(onnx.numpy_helper.from_array(values, initializer.name))
    onnx.save(model, tmp_path / "infinite.onnx")
    with pytest.raises(ModelFormatError, match="IsNaN x1, Where x1"):
        import_onnx(tmp_path / "infinite.onnx")


class _TanhGelu(torch.nn.Module):
    """GELU's tanh approximation: torch's own, or written out with a power and the half first."""

    def __init__(self, written_out: bool) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.written_out = written_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if not self.written_out:
            return F.gelu(h, approximate="tanh")
        inner = math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3))
        return (0.5 * h) * (1 + torch.tanh(inner))


@pytest.mark.parametrize("written_out", [False, True])
def test_the_tanh_gelu_formula_reads_as_gelu(tmp_path: Path, written_out: bool) -> None:
    torch.manual_seed(0)
    path = tmp_path / "tanh.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TanhGelu(written_out).eval(), (torch.zeros(2, 8),), path, input_names=["x"],
                          dynamo=False, opset_version=17)  # fmt: skip
    assert "Tanh" in _ops(path) and ("Pow" in _ops(path)) == written_out
    net = _same_as_onnxruntime(path, (2, 8))
    assert [(layer.type, layer.params.get("approximate")) for layer in net.layers()][-1] == ("GELU", "tanh")
