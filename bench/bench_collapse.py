"""Collapse benchmark: VGG16's first block before and after ``collapse`` (FIT, one 5x5 conv).

The edit is that of ``specs/vgg16_block1_collapse.prototxt``::

    surgery.collapse(net, "features.0", "features.2", "features.block1_conv12",
                     mode="FIT", kernel_size=5, samples=8)

on torchvision's vgg16 (random init), then ``surgery.to_torch``. Ratios measured side by
side in this one run (eval mode, ``torch.no_grad()``, the same 224x224 input tensor for
both sides, batch 1, medians of rounds in a seeded shuffled order, see
``bench_core.interleaved``; ``--repeat`` rounds for the whole net, five times as many
for the block):

1. block 1 after / before: the emitted model's ``features.block1_conv12`` (conv 3->64
   5x5 pad 2) then ``features.3`` (the ReLU that followed ``features.2``), vs
   torchvision's ``features[0:4]`` (conv 3->64 3x3, ReLU, conv 64->64 3x3, ReLU). Both
   are the models' own submodules, called in an ``nn.Sequential``;
2. the whole vgg16 forward: the emitted model after the collapse vs torchvision's
   eager module.

The speed-up is bought with accuracy: the fit is a least-squares 5x5 convolution
standing in for conv-ReLU-conv, so the relative error it reached on held-out inputs
(from the collapse's report line) is printed beside it, with the time the fit took and
the relative error of the block's output on the timing input. With random weights and
random-normal calibration inputs expect about 0.4, roughly what a linear map can do for
a ReLU between: for a zero-mean Gaussian z, the best affine stand-in for relu(z) misses
by sqrt((1 - 2/pi) / 4 / (1/2)) ~ 0.43 of its norm. It is not a bug in the fit.

The net is loaded with ``input_shape`` (1, 3, 224, 224), the size the timings use, so
the fit sees 8 samples at that size: about 2 s on 2 cores (4-5 s while other jobs run)
and a 2.3 GB process peak. Loading with (1, 3, 64, 64) fits in 0.5 s to a similar
error, and the emitted model would still run at 224x224 (convolutions and
AdaptiveAvgPool2d((7, 7)) do not depend on the load shape), but the fit would then see
far more border than the timed input has.

Run: ``python bench/bench_collapse.py`` (needs torchvision).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import interleaved, print_row

FIRST, SECOND, MERGED = "features.0", "features.2", "features.block1_conv12"
SHAPE = (1, 3, 224, 224)


def prepare() -> dict:
    """The torchvision model, the emitted model after the collapse and the fit's figures."""
    import torchvision

    import surgery

    torch.manual_seed(0)
    original = torchvision.models.vgg16().eval()
    net = surgery.load(original, SHAPE)
    start = time.perf_counter()
    actions = surgery.collapse(net, FIRST, SECOND, MERGED, mode="FIT", kernel_size=5, samples=8)
    fit_s = time.perf_counter() - start
    detail = next(a.detail for a in actions if a.layer == MERGED)
    match = re.search(r"relative error ([0-9.eE+-]+)", detail)
    emitted = surgery.to_torch(net).eval()
    return {
        "original": original,
        "emitted": emitted,
        "fit_s": fit_s,
        "detail": detail,
        "fit_error": float(match.group(1)) if match else None,
    }


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    return float((estimate - target).norm() / target.norm())


def bench_block(original: nn.Module, emitted: nn.Module, x: torch.Tensor, repeat: int) -> dict:
    before = original.features[:4]  # conv, ReLU, conv, ReLU (torchvision's own modules)
    after = nn.Sequential(emitted.get_submodule(MERGED), emitted.get_submodule("features.3"))
    with torch.no_grad():
        block_error = relative_error(after(x), before(x))
        t_before, t_after = interleaved(lambda: before(x), lambda: after(x), repeat)
    return {"before_s": t_before, "after_s": t_after, "ratio": t_after / t_before, "block_output_error": block_error}


def bench_forward(original: nn.Module, emitted: nn.Module, x: torch.Tensor, repeat: int) -> dict:
    with torch.no_grad():
        t_eager, t_emitted = interleaved(lambda: original(x), lambda: emitted(x), repeat)
    return {"eager_s": t_eager, "emitted_s": t_emitted, "ratio": t_emitted / t_eager}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repeat",
        type=int,
        default=9,
        help="rounds for the whole-net row (the far cheaper block row takes five times as many)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    models = prepare()
    torch.manual_seed(1)
    x = torch.randn(*SHAPE)
    results: dict[str, dict] = {
        "fit": {"fit_s": models["fit_s"], "relative_error": models["fit_error"], "detail": models["detail"]}
    }
    results["block1"] = bench_block(models["original"], models["emitted"], x, 5 * args.repeat)
    print_row("vgg16 block1: 5x5 conv+ReLU after collapse / before", results["block1"], "after_s", "before_s")
    results["forward"] = bench_forward(models["original"], models["emitted"], x, args.repeat)
    print_row("vgg16 forward: emitted after collapse / torchvision", results["forward"], "emitted_s", "eager_s")
    fit = results["fit"]
    error = f"{fit['relative_error']:.4f}" if fit["relative_error"] is not None else f"? ({fit['detail']})"
    print(
        f"{'  accuracy cost: fit relative error (held out)':<55} {error:>7}  (fit at "
        f"{SHAPE[2]}x{SHAPE[3]}, 8 samples, {fit['fit_s']:.1f} s; block output error on the timing input "
        f"{results['block1']['block_output_error']:.4f})",
        flush=True,
    )
    return results


if __name__ == "__main__":
    main()
