"""The video paths on a GPU, as a user with one CUDA machine runs them: one line per check.

- ``surgery features`` of mp4 files on the GPU vs on the CPU (max difference);
- 2 torchrun workers sharing one GPU vs 1 process (the same features, a manifest);
- the DDP head example on 1 rank (NCCL) and on 2 ranks sharing the GPU (gloo): ranks agree;
- ``surgery stream`` on the GPU and on the CPU with the trained head;
- ``surgery inspect`` of an ONNX file imports neither torch nor onnx.

It writes 66 + 22 small H.264 files (the digits example's), needs PyAV (the ``video``
extra), exits 1 when a check fails, and says so and exits 0 where torch sees no GPU::

    python bench/gpu_video_check.py          # about a minute of GPU work
    python bench/gpu_video_check.py --cpu    # the same checks on the CPU (slower), to keep it working
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
SPEC = str(ROOT / "specs" / "digits_video.prototxt")
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
PY = sys.executable
failed: list[str] = []


def run(name: str, command: list[str], timeout: int = 240) -> str:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    ok = done.returncode == 0
    print(f"[{'ok' if ok else 'FAIL'}] {name}: exit {done.returncode}, {seconds:.1f} s", flush=True)
    if not ok:
        failed.append(name)
        print(text[-3000:], flush=True)
    return text


def check(name: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        failed.append(name)


def features_of(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p) for p in sorted(folder.glob("*/*.npy"))}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the GPU's checks on the CPU")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu:
        print(f"torch {torch.__version__} sees no CUDA GPU: nothing to check (--cpu runs the checks on the CPU)")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-video-") as temp:
        return _checks("cpu" if args.cpu else "cuda", Path(temp))


def _checks(gpu: str, work: Path) -> int:
    """Every check, with ``gpu`` ("cuda", or "cpu" standing in for it); files go to ``work``."""
    import torch
    import video_digits_files as vdf

    name = torch.cuda.get_device_name(0) if gpu == "cuda" else "the CPU standing in for the GPU"
    print("torch", torch.__version__, name, flush=True)
    n = vdf.write_dataset(work / "train", 6, seed=0) + vdf.write_dataset(work / "test", 2, seed=1)
    print(f"{n} mp4 files written", flush=True)
    cli = [PY, "-m", "surgery.cli"]
    tr = [PY, "-m", "torch.distributed.run", "--standalone"]

    run("features_cpu", [*cli, "features", SPEC, str(work / "train"), "-o", str(work / "f_cpu"), "--device", "cpu"])
    out = run("features_gpu", [*cli, "features", SPEC, str(work / "train"), "-o", str(work / "f_gpu"), "--device", gpu])
    print("   ", ", ".join(re.findall(r"[\d.]+ frames/s", out)), flush=True)
    cpu_f, gpu_f = features_of(work / "f_cpu"), features_of(work / "f_gpu")
    worst = (
        max(float(np.abs(cpu_f[k] - gpu_f[k]).max()) for k in cpu_f) if cpu_f and cpu_f.keys() == gpu_f.keys() else -1
    )
    scale = max(float(np.abs(v).max()) for v in cpu_f.values()) if cpu_f else 0
    check(
        "features_cpu_vs_gpu",
        0 <= worst <= 1e-3 * max(scale, 1),
        f"max |cpu - gpu| {worst:.3g} (values up to {scale:.3g}), {len(cpu_f)} clips",
    )

    run(
        "features_torchrun_2_on_1_gpu",
        [
            *tr,
            "--nproc_per_node=2",
            "-m",
            "surgery.cli",
            "features",
            SPEC,
            str(work / "train"),
            "-o",
            str(work / "f_tr2"),
        ],
    )
    tr_f = features_of(work / "f_tr2")
    worst = max(float(np.abs(tr_f[k] - gpu_f[k]).max()) for k in gpu_f) if tr_f.keys() == gpu_f.keys() and gpu_f else -1
    manifest = (work / "f_tr2" / "manifest.json").is_file()
    check(
        "torchrun_2_workers_vs_1",
        0 <= worst <= 1e-4 * max(scale, 1) and manifest,
        f"max |diff| {worst:.3g}, manifest {manifest}",
    )
    run("features_test_gpu", [*cli, "features", SPEC, str(work / "test"), "-o", str(work / "t_gpu"), "--device", gpu])

    head = [str(ROOT / "examples" / "train_head_ddp.py"), SPEC, str(work / "f_gpu")]
    saved = ["--test", str(work / "t_gpu"), "--epochs", "20", "--save", str(work / "head.pt")]
    out = run("ddp_head_1_rank", [*tr, "--nproc_per_node=1", *head, *saved])
    check(
        "ddp_1_rank_accuracy", "held-out accuracy" in out, (re.findall(r"held-out accuracy [^\n]*", out) or ["none"])[0]
    )
    out = run("ddp_head_2_ranks_share_gpu", [*tr, "--nproc_per_node=2", *head, "--epochs", "5"])
    check(
        "ddp_2_ranks_agree",
        "max |difference| 0" in out,
        (re.findall(r"ranks, weights agree[^\n]*", out) or ["none"])[0],
    )

    video = str(sorted((work / "test").glob("*/*.mp4"))[0])
    for device in (gpu, "cpu"):
        out = run(
            f"stream_{device}",
            [*cli, "stream", SPEC, video, "--weights", str(work / "head.pt"), "--every", "20", "--device", device],
        )
        print("   ", " / ".join(out.strip().splitlines()[-2:]), flush=True)

    # the front door: inspect of an ONNX file imports neither torch nor onnx (a fresh interpreter)
    import surgery
    from surgery.zoo import digits_cnn

    onnx_file = work / "digits.onnx"
    surgery.save_onnx(surgery.load(digits_cnn(), (1, 1, 8, 8)), onnx_file)
    probe = (
        f"import sys; from surgery.cli import main; main(['inspect', {str(onnx_file)!r}]); "
        "print('imported torch', 'torch' in sys.modules, 'onnx', 'onnx' in sys.modules)"
    )
    out = run("inspect_onnx", [PY, "-c", probe])
    found = re.findall(r"imported torch [^\n]*", out) or ["none"]
    check("inspect_without_torch_or_onnx", found[0] == "imported torch False onnx False", found[0])

    print("failed:", ", ".join(failed) if failed else "none", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
