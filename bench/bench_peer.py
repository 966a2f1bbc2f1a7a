"""ONNX import + torch emit vs the ONNX-to-PyTorch peer (onnx2torch's ``convert``), side by
side in one run, on the largest classic of the ONNX model zoo that both read (ZFNet-512, 62M parameters, with
seeded weights: ``tests/onnx_zoo.py``), each from the file on disk to a torch module.

Run: ``python bench/bench_peer.py`` (needs onnx2torch, in the test extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_core import interleaved  # noqa: E402
from onnx_zoo import zoo_classic  # noqa: E402

CACHE = HERE / ".cache" / "peer"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="zfnet512")
    args = parser.parse_args(argv)
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        print("onnx2torch side by side: skipped (pip install onnx2torch)")
        return {}
    import surgery

    CACHE.mkdir(parents=True, exist_ok=True)
    path = zoo_classic(args.model, CACHE)
    peer, ours = interleaved(
        lambda: convert(onnx.load(path)), lambda: surgery.to_torch(surgery.load(path)), args.repeat
    )
    print(f"ONNX import + torch emit / onnx2torch {ours / peer:6.2f}x   ({ours:.2f} s vs {peer:.2f} s, {args.model})")
    return {"surgery_s": ours, "onnx2torch_s": peer, "ratio": ours / peer}


if __name__ == "__main__":
    main()
