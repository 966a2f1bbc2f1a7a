"""Reduced-precision deploy files vs float32, measured side by side in onnxruntime on the CPU:
latency (batch 1, interleaved rounds), file size, and top-1 agreement with float32 on a
held-out half of the inputs, for torchvision resnet50 (conv INT8: static QDQ, per-channel)
and vit_b_32 (attention and MLP MatMuls), and the shipped digits CNN (trained weights, so
its agreement is a real figure; the torchvision models have random weights here, whose
class scores are near ties, so their agreement is a lower bound of what trained ones reach).

Calibration inputs are smooth random images (low-frequency noise upsampled), the model's
input distribution when nothing better is at hand; the conversion is what
``output { onnx { precision } }`` runs (:mod:`surgery.emitters.onnx_precision`).

Run: ``python bench/bench_precision.py`` (needs torchvision, onnxruntime, onnxconverter-common).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import interleaved


def _images(count: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random images, normalised as ImageNet models expect."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 1, (count, channels, 8, 8)).astype(np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406][:channels]), torch.tensor([0.229, 0.224, 0.225][:channels])
    return ((images.clamp(0, 1) - mean[:, None, None]) / std[:, None, None]).numpy()


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _top1(session, inputs: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + 1]})[0].argmax(1) for i in range(len(inputs))])


def bench_model(label: str, net, inputs: np.ndarray, repeat: int) -> None:
    from surgery.emitters.onnx_model import build_model
    from surgery.emitters.onnx_precision import to_fp16, to_int8

    fp32 = build_model(net)
    half = len(inputs) // 2
    calibration, held_out = inputs[:half], inputs[half:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = {"INT8": to_int8(fp32, inputs=calibration), "FP16": to_fp16(fp32)}
    base = _session(fp32)
    feed = {base.get_inputs()[0].name: held_out[:1]}
    top1 = _top1(base, held_out)
    for precision, model in reduced.items():
        session = _session(model)
        t_fp32, t_low = interleaved(lambda: base.run(None, feed), lambda s=session: s.run(None, feed), repeat)
        agreement = float((_top1(session, held_out) == top1).mean())
        size = model.ByteSize() / fp32.ByteSize()
        print(
            f"{label + ' ' + precision + ' vs FP32 latency':<55} {t_low / t_fp32:6.2f}x  ({t_low * 1e3:.3g} ms vs "
            f"{t_fp32 * 1e3:.3g} ms); size {size:.2f}x; top-1 agreement {agreement:.3f} on {len(held_out)}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--count", type=int, default=64, help="inputs: half calibrate, half are held out")
    args = parser.parse_args(argv)
    import torchvision

    import surgery

    torch.manual_seed(0)
    digits = surgery.load(
        "surgery.zoo:DigitsCNN", (1, 1, 8, 8), weights=Path(surgery.__file__).parent / "zoo" / "digits_cnn.pt"
    )
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[:400, None] * 16).clip(0, 255).astype(np.float32) / 255
    bench_model("digits CNN (trained)", digits, pixels, args.repeat)
    bench_model(
        "resnet50 (random weights)",
        surgery.load(torchvision.models.resnet50(), (1, 3, 224, 224)),
        _images(args.count, 224),
        args.repeat,
    )
    bench_model(
        "vit_b_32 (random weights)",
        surgery.load(torchvision.models.vit_b_32(), (1, 3, 224, 224)),
        _images(args.count, 224),
        args.repeat,
    )


if __name__ == "__main__":
    main()
