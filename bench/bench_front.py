"""The front door's cost: what a person waits for before ``inspect`` and ``plan`` answer.

Each row is measured side by side in this one run, every command in a fresh process (as
a person runs it), in seeded-shuffled rounds (see ``bench_core.interleaved``):

1. ``surgery inspect`` of a small ONNX file (the shipped digits CNN), in seconds (goal
   <= 0.5 s), and whether that process imported torch (goal: no) or onnx;
2. ``surgery inspect`` of torchvision resnet50's ONNX file (about 100 MB) vs ``python -c
   "import onnx; onnx.load(...)"`` on the same file (goal <= 1.2x);
3. ``surgery plan`` of a spec that appends 10,000 layers vs one that appends 1, on the
   same source: the difference in seconds (goal <= 2 s).

surgery's bytecode is compiled first, as ``pip install`` does: where
PYTHONDONTWRITEBYTECODE is set (this machine's shell sets it), every command would
otherwise compile the package's sources again and time that.

Run: ``python bench/bench_front.py`` (row 2 needs torchvision).
"""

from __future__ import annotations

import argparse
import compileall
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import interleaved

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "front"
SURGERY = [sys.executable, "-m", "surgery.cli"]
TORCH_CHECK = (
    "import sys; from surgery.cli import main; main(['inspect', {path!r}]); "
    "print('imported torch:', 'torch' in sys.modules, 'onnx:', 'onnx' in sys.modules, file=sys.stderr)"
)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return done


def small_onnx() -> Path:
    import surgery
    from surgery.zoo import digits_cnn

    path = CACHE / "digits.onnx"
    if not path.exists():
        surgery.save_onnx(surgery.load(digits_cnn(), (1, 1, 8, 8)), path)
    return path


def big_onnx() -> Path:
    import torch
    import torchvision

    import surgery

    path = CACHE / "resnet50.onnx"
    if not path.exists():
        torch.manual_seed(0)
        surgery.save_onnx(surgery.load(torchvision.models.resnet50(), (1, 3, 224, 224)), path)
    return path


def append_spec(layers: int) -> Path:
    """A spec on the digits CNN that appends ``layers`` ReLU layers under its output."""
    path = CACHE / f"append_{layers}.prototxt"
    if not path.exists():
        body = "".join(f'  layer {{ name: "relu_{i}" type: "ReLU" }}\n' for i in range(layers))
        path.write_text(
            'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
            f"seed: 1\nedit {{ append {{\n{body}}} }}\n"
        )
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    compileall.compile_dir(HERE.parent / "surgery", quiet=1)
    rows: dict = {}

    small = small_onnx()
    _, t_small = interleaved(lambda: None, lambda: _run([*SURGERY, "inspect", str(small)]), args.repeat)
    imported = _run([sys.executable, "-c", TORCH_CHECK.format(path=str(small))]).stderr.strip().splitlines()[-1]
    rows["inspect_small_s"] = t_small
    print(f"inspect digits.onnx (small)          {t_small:6.2f} s    (goal <= 0.5 s); {imported}")

    try:
        big = big_onnx()
    except ImportError:
        print("inspect resnet50.onnx: skipped (needs torchvision)")
    else:
        floor, ours = interleaved(
            lambda: _run([sys.executable, "-c", f"import onnx; onnx.load({str(big)!r})"]),
            lambda: _run([*SURGERY, "inspect", str(big)]),
            args.repeat,
        )
        rows["inspect_big"] = {"onnx_load_s": floor, "inspect_s": ours, "ratio": ours / floor}
        figures = f"({ours:.2f} s vs {floor:.2f} s; goal <= 1.2x)"
        print(f"inspect resnet50.onnx / onnx.load     {ours / floor:6.2f}x   {figures}")

    one, many = append_spec(1), append_spec(10_000)
    t_one, t_many = interleaved(
        lambda: _run([*SURGERY, "plan", "-q", str(one)]), lambda: _run([*SURGERY, "plan", "-q", str(many)]), 3
    )
    rows["plan_10k"] = {"one_s": t_one, "ten_thousand_s": t_many, "extra_s": t_many - t_one}
    figures = f"({t_many:.2f} s vs {t_one:.2f} s; goal <= 2 s)"
    print(f"plan 10,000 appended layers - plan 1  {t_many - t_one:6.2f} s    {figures}")
    return rows


if __name__ == "__main__":
    main()
