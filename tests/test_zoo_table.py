"""tools/zoo_table.py writes the zoo rows between the README's markers, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import zoo_table  # noqa: E402

ROWS = [
    {
        "family": "torchvision",
        "model": "resnet18",
        "input": 64,
        "params": 11_689_512,
        "head": "fc",
        "stage": "done",
        "ok": True,
        "max_rel": 3.2e-7,
        "error": None,
        "layers": 70,
        "opaque": [],
    },
    {
        "family": "torchvision",
        "model": "vit_b_16",
        "input": 32,
        "params": 86_567_656,
        "head": "heads.head",
        "stage": "done",
        "ok": True,
        "max_rel": 1.2e-6,
        "error": None,
        "layers": 170,
        "opaque": ["expand", "getattr_1"],
    },
    {
        "family": "timm",
        "model": "mobilevit_s",
        "input": 64,
        "params": 5_578_632,
        "stage": "load",
        "ok": False,
        "error": "ModelFormatError: torch.fx cannot trace ByobNet | x",
    },
]


def test_table_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{zoo_table.BEGIN}\nold table\n{zoo_table.END}\nafter\n")
    zoo_table.write(readme, ROWS)
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n") and text.endswith(f"{zoo_table.END}\nafter\n") and "old table" not in text
    assert "| torchvision 0.29 | 2 | 2 | 2 | 2 | 99.2% of 240 |" in text and "| timm 1.0 | 1 | 0 | 0 | 0 | - |" in text
    assert "| torchvision:resnet18 | 64 | 11.7M | 70 | `fc` | ok (max rel 3.2e-07) |" in text
    assert "| torchvision:vit_b_16 | 32 | 86.6M | 170 (2 untyped) | `heads.head` | ok (max rel 1.2e-06) |" in text
    assert "stops at load: ModelFormatError: torch.fx cannot trace ByobNet / x |" in text


def test_the_readme_has_the_markers() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.index(zoo_table.BEGIN) < text.index(zoo_table.END)
