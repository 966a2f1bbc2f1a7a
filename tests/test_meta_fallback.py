"""inspect / plan build a torch factory on the meta device; a constructor that reads
tensor values there is built on the CPU instead, with a note, and weights still come
from the weights file."""

from __future__ import annotations

from pathlib import Path

import torch

import surgery
from surgery.cli import main

FACTORY = '''
import torch
from torch import nn


class Widths(nn.Module):
    """Layer widths computed with tensors, read back with .tolist() (as RegNet does)."""

    def __init__(self):
        super().__init__()
        widths = (torch.arange(2) * 4 + 4).tolist()
        self.a = nn.Conv2d(3, widths[0], 3)
        self.b = nn.Conv2d(widths[0], widths[1], 3)

    def forward(self, x):
        return self.b(self.a(x))
'''


def test_inspect_falls_back_to_a_cpu_build_and_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "widths.py").write_text(FACTORY)
    assert main(["inspect", f"{tmp_path / 'widths.py'}:Widths", "--input-shape", "1,3,8,8"]) == 0
    captured = capsys.readouterr()
    assert "note: Widths reads tensor values while it is built" in captured.err and "Traceback" not in captured.err
    assert "1x8x4x4" in captured.out


def test_weights_still_come_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "widths.py").write_text(FACTORY)
    torch.manual_seed(5)
    net = surgery.load(f"{tmp_path / 'widths.py'}:Widths", (1, 3, 8, 8))
    state = {
        f"{layer.name}.{role}": torch.randn(blob.shape) for layer in net.layers() for role, blob in layer.blobs.items()
    }
    torch.save(state, tmp_path / "w.pt")
    spec = tmp_path / "s.prototxt"
    spec.write_text(
        'source { torch { factory: "widths.py:Widths" weights: "w.pt" } input_shape: [1, 3, 8, 8] }\n'
        'edit { lr { layer: "a" lr_mult: 0 } }\n'
    )
    assert main(["plan", str(spec)]) == 0
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 0
    model = surgery.load_torch_folder(tmp_path / "out" / "torch")
    assert torch.equal(model.b.weight, state["b.weight"]) and torch.equal(model.a.bias, state["a.bias"])
