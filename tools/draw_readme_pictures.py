"""Regenerate the README's pictures of the change (docs/*.svg) from the shipped specs.

    python tools/draw_readme_pictures.py

Each picture is what `surgery draw SPEC -o docs/NAME.svg` writes; run this after a change
to the drawing code or to those specs, and commit the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import surgery  # noqa: E402

PICTURES = {
    "googlenet_flowers.prototxt": "googlenet_flowers.svg",
    "digits_gate.prototxt": "digits_gate.svg",
}
LIMIT = 60_000  # bytes: small enough to review in a pull request


def main() -> int:
    docs = ROOT / "docs"
    for spec, picture in PICTURES.items():
        out = surgery.draw(ROOT / "specs" / spec, docs / picture)
        size = out.stat().st_size
        print(f"{out.relative_to(ROOT)}: {size:,} bytes")
        if size > LIMIT:
            print(f"  larger than {LIMIT:,} bytes: the README wants small pictures", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
