"""Sizes read from shapes (``n, c, h, w = x.shape``) are computed at import: a size that
is the same at any batch is a literal of the layers that read it, a reshape whose sizes
follow the batch is a typed Reshape (0 copies the batch axis, -1 is inferred), and only
values that truly change with the batch stay runtime calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import surgery
from surgery.emitters.onnx_model import emit_onnx
from surgery.layers.opaque_call import InputRef
from surgery.verify import onnx_session


class ShuffleAndWindows(nn.Module):
    """ShuffleNet's channel shuffle and Swin/MaxViT's window partition, written the way
    those models write them: every size read from the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        n, _, h, w = x.shape
        y = self.conv(x)
        c = y.shape[1]
        torch._assert(c == 8, "eight channels")
        torch._assert(y.dim() == 4, "a 4-D tensor")
        groups = 2
        y = y.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        p = 2
        windows = y.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(-1, p * p, c)
        return windows.reshape(n, -1)


def _outputs_match(model: nn.Module, net: surgery.Net, batches: tuple[int, ...], tmp_path: Path) -> None:
    """The emitted torch model equals ``model`` exactly, and the ONNX file matches it in
    onnxruntime within 1e-6, at every batch size in ``batches``."""
    emitted = surgery.to_torch(net).eval()
    session = onnx_session(emit_onnx(net, tmp_path / "m.onnx"))
    for batch in batches:
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            expected = model(x)
            assert torch.equal(emitted(x), expected), f"batch {batch}"
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6, rtol=0, err_msg=f"batch {batch}")


def test_sizes_are_computed_at_import_and_reshapes_are_typed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ShuffleAndWindows().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    types = [layer.type for layer in net.layers()]
    assert "OpaqueCall" not in types, [(x.name, x.extra.get("target")) for x in net.layers() if x.type == "OpaqueCall"]
    reshapes = [layer.params["shape"] for layer in net.layers() if layer.type == "Reshape"]
    assert reshapes == [[0, 2, 4, 8, 8], [0, 8, 8, 8], [0, 8, 4, 2, 4, 2], [-1, 4, 8], [-1, 512]], (
        "static sizes are literals, the batch axis is 0, the window count follows the batch as -1"
    )
    _outputs_match(model, net, (2, 3, 7), tmp_path)


class ClassToken(nn.Module):
    """ViT's class token: expanded to the batch size, a value only known at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 24))

    def forward(self, x):
        n = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2).reshape(n, -1, 24)
        return torch.cat([self.token.expand(n, -1, -1), tokens], dim=1)


def test_a_size_that_follows_the_batch_stays_a_runtime_value(tmp_path: Path) -> None:
    model = ClassToken().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    calls = [layer.extra["target"] for layer in net.layers() if layer.type == "OpaqueCall"]
    assert "expand" in calls, "expand reads the batch size at run time"
    assert not any(call in ("reshape", "flatten", "transpose") for call in calls)
    _outputs_match(model, net, (2, 1, 5), tmp_path)


class HalfBatch(nn.Module):
    """A size computed from the batch that two nearby batch sizes could share (n // 2)."""

    def forward(self, x):
        return x.reshape(x.shape[0] // 2, -1) * 2


def test_a_batch_dependent_size_is_never_folded_into_a_literal(tmp_path: Path) -> None:
    model = HalfBatch().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    assert not any(layer.params.get("shape", [None])[0] == 1 for layer in net.layers() if layer.type == "Reshape"), (
        "n // 2 is 1 at the import's batch size only"
    )
    _outputs_match(model, net, (2, 4, 6), tmp_path)


class FixedBatch(nn.Module):
    """A model written for one batch size: the importer cannot learn what its sizes would
    be at another, so it folds nothing that might depend on the batch."""

    def forward(self, x):
        return x.view(2, -1) + x.shape[1]


def test_a_model_written_for_one_batch_size_still_imports(tmp_path: Path) -> None:
    model = FixedBatch().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(surgery.to_torch(net).eval()(x), model(x))


class OnTheInputsDevice(nn.Module):
    """``device=x.device``: the import runs on the meta device, which must never become a
    literal of the emitted model."""

    def forward(self, x):
        return x + torch.full((x.shape[1], 1, 1), 0.5, device=x.device, dtype=x.dtype)


def test_the_device_is_never_folded(tmp_path: Path) -> None:
    model = OnTheInputsDevice().eval()
    net = surgery.load(model, (2, 3, 8, 8))
    (full,) = [layer for layer in net.layers() if layer.type == "OpaqueCall" and layer.extra["target"] is torch.full]
    assert full.extra["args"][0] == (3, 1, 1), "the size is a literal"
    assert isinstance(full.extra["kwargs"]["device"], InputRef), "the device is read at run time"
    _outputs_match(model, net, (2, 3), tmp_path)
