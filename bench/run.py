"""Run every benchmark in one process and print its ratios (each measured side by side).

python bench/run.py            # 5-6 minutes on 2 cores; needs torchvision, onnxruntime, transformers, peft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_collapse
import bench_core
import bench_front
import bench_hf
import bench_keras
import bench_lora
import bench_onnx
import bench_peer
import bench_precision
import bench_solver
import bench_video

#: Every section, in the order they run: (name, the module's main).
SECTIONS = (
    ("core (torch)", bench_core.main),
    ("onnx", bench_onnx.main),
    ("collapse", bench_collapse.main),
    ("video", bench_video.main),
    ("keras", bench_keras.main),
    ("front door", bench_front.main),
    ("ONNX peer", bench_peer.main),
    ("Caffe solver", bench_solver.main),
    ("reduced precision (onnxruntime, CPU)", bench_precision.main),
    ("Hugging Face import", bench_hf.main),
    ("LoRA step vs PEFT", bench_lora.main),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", metavar="SECTION", help="run only this section (a word of its name; repeatable)"
    )
    args = parser.parse_args(argv)
    for name, run in SECTIONS:
        if args.only and not any(word.lower() in name.lower() for word in args.only):
            continue
        print(f"== {name} ==", flush=True)
        run([])


if __name__ == "__main__":
    main()
