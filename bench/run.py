"""Run every benchmark in one process and print its ratios (each measured side by side).

python bench/run.py            # 2-3 minutes on 2 cores; needs torchvision + onnxruntime
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_collapse
import bench_core
import bench_front
import bench_keras
import bench_onnx
import bench_peer
import bench_precision
import bench_solver
import bench_video

if __name__ == "__main__":
    print("== core (torch) ==")
    bench_core.main([])
    print("== onnx ==")
    bench_onnx.main([])
    print("== collapse ==")
    bench_collapse.main([])
    print("== video ==")
    bench_video.main([])
    print("== keras ==")
    bench_keras.main([])
    print("== front door ==")
    bench_front.main([])
    print("== ONNX peer ==")
    bench_peer.main([])
    print("== Caffe solver ==")
    bench_solver.main([])
    print("== reduced precision (onnxruntime, CPU) ==")
    bench_precision.main([])
