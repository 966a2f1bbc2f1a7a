"""One optimizer step of the emitted Caffe recipe (``model.caffe_solver()``: SGD, momentum
0.9, weight decay, the rate inside the history) vs ``torch.optim.SGD`` over the same
parameter groups, side by side in one run, on a torchvision resnet50 (25.6M parameters)
with fixed gradients. Goal: <= 1.05x.

Run: ``python bench/bench_solver.py``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_core import interleaved  # noqa: E402

SETTINGS = {"type": "SGD", "lr_policy": "step", "base_lr": 0.01, "gamma": 0.1, "stepsize": 100000,
            "momentum": 0.9, "weight_decay": 0.0005, "regularization_type": "L2", "clip_gradients": -1.0,
            "iter_size": 1, "max_iter": 450000}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        import torchvision
    except ImportError:
        print("Caffe recipe step: skipped (needs torchvision)")
        return {}
    import surgery

    torch.manual_seed(0)
    model = surgery.to_torch(surgery.load(torchvision.models.resnet50(), (1, 3, 224, 224)))
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    caffe, _ = model.caffe_solver(SETTINGS)
    plain = torch.optim.SGD(model.param_groups(lr=0.01, weight_decay=0.0005), momentum=0.9)
    reference, ours = interleaved(plain.step, caffe.step, args.repeat)
    times = f"{ours * 1e3:.1f} ms vs {reference * 1e3:.1f} ms"
    print(f"Caffe recipe step / torch.optim.SGD {ours / reference:6.2f}x   ({times})")
    return {"caffe_ms": ours * 1e3, "sgd_ms": reference * 1e3, "ratio": ours / reference}


if __name__ == "__main__":
    main()
