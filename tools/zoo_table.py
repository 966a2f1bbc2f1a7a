"""Write the model-zoo table into README.md from the rows the zoo test saved.

    SURGERY_ZOO_JSON=zoo.json python -m pytest tests/test_zoo_models.py
    python tools/zoo_table.py zoo.json

The table goes between the ``<!-- zoo:begin -->`` and ``<!-- zoo:end -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"
FAMILIES = {"torchvision": "torchvision 0.29", "torchvision.video": "torchvision 0.29 video", "timm": "timm 1.0"}


def summary(rows: list[dict]) -> list[str]:
    lines = [
        "| | tried | load | classifier resize | torch + ONNX + verify | layers with a type |",
        "|---|---|---|---|---|---|",
    ]
    for family, label in FAMILIES.items():
        mine = [row for row in rows if row["family"] == family]
        if not mine:
            continue

        def past(*stages: str, mine: list[dict] = mine) -> int:
            return sum(row["stage"] not in stages for row in mine)

        layers = sum(row.get("layers", 0) for row in mine)
        typed = layers - sum(len(row.get("opaque") or []) for row in mine)
        share = f"{100 * typed / layers:.1f}% of {layers}" if layers else "-"
        lines.append(
            f"| {label} | {len(mine)} | {past('build', 'load')} | {past('build', 'load', 'classifier')} "
            f"| {sum(row['ok'] for row in mine)} | {share} |"
        )
    return lines


def _portable(message: str) -> str:
    """An error message without this machine's install prefix (``.../site-packages/``)."""
    return re.sub(r"/\S*?/(?:site|dist)-packages/", "", message)


def _layers(row: dict) -> str:
    """``173 (3 untyped)``: the imported layers, and how many surgery has no type for
    (opaque modules and calls, which still run and still reach ONNX)."""
    if "layers" not in row:
        return "-"
    untyped = len(row.get("opaque") or [])
    return f"{row['layers']} ({untyped} untyped)" if untyped else f"{row['layers']}"


def details(rows: list[dict]) -> list[str]:
    lines = ["| model | input | params | layers | head | result |", "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (list(FAMILIES).index(r["family"]), r["model"])):
        params = f"{row['params'] / 1e6:.1f}M" if row.get("params") else "-"
        result = (
            f"ok (max rel {row['max_rel']:.1e})" if row["ok"] else f"stops at {row['stage']}: {_portable(row['error'])}"
        )
        lines.append(
            f"| {row['family']}:{row['model']} | {row['input']} | {params} | {_layers(row)} "
            f"| `{row.get('head') or '-'}` | {result.replace('|', '/')} |"
        )
    return lines


def table(rows: list[dict]) -> str:
    body = [*summary(rows), "", "<details><summary>every model</summary>", "", *details(rows), "", "</details>"]
    return "\n".join(body)


def write(readme: Path, rows: list[dict]) -> None:
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + table(rows) + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, help="the JSON the zoo test wrote (SURGERY_ZOO_JSON)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    write(args.readme, json.loads(args.rows.read_text()))


if __name__ == "__main__":
    main()
