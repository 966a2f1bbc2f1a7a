"""Core benchmark: surgery's apply, memory and emitted-model speed on torchvision vgg16.

Every figure is a ratio measured side by side in this one run (same machine, same
moment), never a number compared with a constant:

1. file-to-file ``surgery apply`` vs the floor of ``torch.load`` + ``torch.save`` of the
   same weights;
2. peak RSS of ``apply`` (in a fresh process) vs the bytes of the weights;
3. forward+backward of the emitted model vs the original torchvision module;
4. one SGD step with the conv trunk frozen (by the spec) vs everything trainable.

The spec (``SPEC``) has ``output { pytorch { } }``: without an ``output`` block ``apply``
writes both the torch folder and the deploy ONNX file (another 528 MB), and a floor of
one ``torch.load`` + one ``torch.save`` would then be compared with two writes. The
target is "file-to-file apply within 1.1x the load+save floor of its format", so this
row is torch to torch; ONNX to ONNX is ``bench_onnx.py``'s. The memory row reuses the
same spec, so its peak is that of a torch-only apply too.

Timings are medians of rounds that each run both sides once, in an order drawn from a
fixed-seed RNG (see :func:`interleaved`). The forward+backward row takes three times
``--repeat`` rounds (9 by default): one vgg16 fwd+bwd on 2 cores takes 1.5-2 s and
varies by about 20% from run to run.

Run: ``python bench/bench_core.py`` (needs torchvision; vgg16 with random init).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

SPEC = """\
source {{ torch {{ factory: "torchvision.models:vgg16" weights: "{weights}" }} input_shape: [1, 3, 224, 224] }}
seed: 1
edit {{ classifier {{ layer: "classifier.6" num_output: 10 }} }}
edit {{ lr {{ match: "features.*" lr_mult: 0 }} }}
output {{ pytorch {{ }} }}
"""


def interleaved(reference, ours, repeat: int, seed: int = 0) -> tuple[float, float]:
    """Median times of two callables over ``repeat`` rounds, after one warm-up each.

    Every round runs each callable once, in an order (reference first or ours first)
    drawn from ``random.Random(seed)``: drift on the machine (page cache, disk
    write-back, thermal, other jobs) hits both alike, neither side always runs right
    after the other, and the same seed gives the same order on every run.
    """
    reference(), ours()
    rng = random.Random(seed)
    calls = (reference, ours)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        order = [0, 1]
        rng.shuffle(order)
        for side in order:
            start = time.perf_counter()
            calls[side]()
            times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def prepare(workdir: Path) -> tuple[Path, Path, int]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16()
    weights = workdir / "vgg16.pt"
    torch.save(model.state_dict(), weights)
    spec = workdir / "vgg16_head.prototxt"
    spec.write_text(SPEC.format(weights=weights.name))
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights, spec, nbytes


def bench_apply(workdir: Path, weights: Path, spec: Path, repeat: int) -> dict:
    import surgery

    # Both write a new file each time and delete it afterwards, so file-system
    # allocation and write-back cost the same on both sides.
    # The floor is the fastest load + save of the format: memory-mapped, as apply loads.
    def floor() -> None:
        state = torch.load(weights, mmap=True, weights_only=True)
        torch.save(state, workdir / "floor.pt")
        os.sync()
        (workdir / "floor.pt").unlink()

    def ours() -> None:
        surgery.apply(spec, workdir / "out")
        os.sync()
        shutil.rmtree(workdir / "out")

    t_floor, t_ours = interleaved(floor, ours, repeat)
    return {"floor_s": t_floor, "apply_s": t_ours, "ratio": t_ours / t_floor}


def bench_memory(workdir: Path, spec: Path, nbytes: int) -> dict:
    script = textwrap.dedent(f"""
        import json, re
        import torch, torchvision, surgery

        def status(key):
            text = open("/proc/self/status").read()
            return int(re.search(key + r":\\s+(\\d+) kB", text).group(1))

        # Reset the high-water mark so the imports' peak does not count.
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        surgery.apply({str(spec)!r}, {str(workdir / "mem_out")!r})
        print(json.dumps({{"base_kb": base, "peak_kb": status("VmHWM")}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    peak = data["peak_kb"] * 1024
    above = (data["peak_kb"] - data["base_kb"]) * 1024
    return {
        "weights_mb": nbytes / 2**20,
        "peak_rss_mb": peak / 2**20,
        "rss_above_imports_mb": above / 2**20,
        "ratio_above_imports": above / nbytes,
    }


def bench_forward_backward(repeat: int) -> dict:
    """Emitted model vs torchvision's module, fwd+bwd at batch 2, median of ``repeat``
    shuffled rounds (main passes 3 x --repeat: this row is the noisiest)."""
    import torchvision

    import surgery

    torch.manual_seed(0)
    original = torchvision.models.vgg16().eval()
    emitted = surgery.to_torch(surgery.load(original, (2, 3, 224, 224))).eval()
    x = torch.randn(2, 3, 224, 224)

    def step(model):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()

        return run

    a, b = interleaved(step(original), step(emitted), repeat)
    return {"eager_s": a, "emitted_s": b, "ratio": b / a}


def bench_frozen_step(repeat: int) -> dict:
    import torchvision

    import surgery

    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([1, 3])

    def make(frozen: bool):
        net = surgery.load(torchvision.models.vgg16(), (2, 3, 224, 224))
        surgery.classifier(net, "classifier.6", num_output=10)
        if frozen:
            surgery.lr(net, match="features.*", lr_mult=0)
        model = surgery.to_torch(net, copy=False).train()
        optimizer = torch.optim.SGD(model.param_groups(lr=0.01, weight_decay=5e-4), momentum=0.9)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        return run

    frozen, full = make(True), make(False)
    t_full, t_frozen = interleaved(full, frozen, repeat)
    return {"all_trainable_s": t_full, "frozen_trunk_s": t_frozen, "ratio": t_frozen / t_full}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds per row (the forward+backward row takes three times as many)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        weights, spec, nbytes = prepare(workdir)
        results["apply_vs_load_save"] = bench_apply(workdir, weights, spec, args.repeat)
        print_row(
            "apply vgg16 torch to torch / torch.load+torch.save", results["apply_vs_load_save"], "apply_s", "floor_s"
        )
        results["memory"] = bench_memory(workdir, spec, nbytes)
        print_memory_row("peak RSS of torch apply above imports / weights bytes", results["memory"])
    results["forward_backward"] = bench_forward_backward(3 * args.repeat)
    print_row("emitted vgg16 fwd+bwd / torchvision eager", results["forward_backward"], "emitted_s", "eager_s")
    results["frozen_step"] = bench_frozen_step(args.repeat)
    print_row(
        "SGD step, conv trunk frozen / all trainable", results["frozen_step"], "frozen_trunk_s", "all_trainable_s"
    )
    return results


def print_memory_row(label: str, m: dict) -> None:
    print(
        f"{label:<55} {m['ratio_above_imports']:6.2f}x  ({m['rss_above_imports_mb']:.0f} MB vs "
        f"{m['weights_mb']:.0f} MB; process peak {m['peak_rss_mb']:.0f} MB)",
        flush=True,
    )


def print_row(label: str, row: dict, ours: str, reference: str) -> None:
    print(f"{label:<55} {row['ratio']:6.2f}x  ({row[ours]:.3f} s vs {row[reference]:.3f} s)", flush=True)


if __name__ == "__main__":
    main()
