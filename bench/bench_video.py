"""Video benchmark: torchvision vgg16's convolutions (random init, 32x32 frames, cut at the
last pooling layer) as a frozen per-frame backbone, an LSTM(256) head; ratios measured side
by side:

1. the streaming step model per frame vs one backbone pass (onnxruntime, batch 1; goal
   <= 1.2x: the state costs next to nothing);
2. recomputing a 40-frame window per new frame (the clip model) vs the step model per frame;
3. one head training step (SGD) on cached features vs one step of the whole clip model with
   the backbone frozen (torch, 4 clips of 40 frames).

Run: ``python bench/bench_video.py`` (needs torchvision and onnxruntime).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import interleaved, print_row

FRAMES, SIZE = 40, 32
HEAD = [
    'name: "lstm" type: "LSTM" recurrent_param { num_output: 256 return_sequences: false }',
    'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }',
]


def clip_net():
    import torchvision

    import surgery

    torch.manual_seed(0)
    net = surgery.load(torchvision.models.vgg16(), (1, 3, SIZE, SIZE))
    surgery.sequence(net, HEAD, at="features.30", frames=FRAMES, seed=1)
    surgery.lr(net, up_to="features.30", lr_mult=0)
    return net


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_streaming(net, workdir: Path, repeat: int) -> tuple[dict, dict]:
    import surgery
    from surgery.emitters.step import emit_step_onnx

    backbone, _ = surgery.split(net)
    image = _session(surgery.save_onnx(backbone, workdir / "backbone.onnx"))
    step = _session(emit_step_onnx(net, workdir / "model_step.onnx"))
    clip = _session(surgery.save_onnx(net, workdir / "clip.onnx"))
    frame = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    window = np.random.default_rng(1).random((1, FRAMES, 3, SIZE, SIZE), dtype=np.float32)
    step_feed = {"x": frame, "lstm.h0": np.zeros((1, 1, 256), np.float32), "lstm.c0": np.zeros((1, 1, 256), np.float32)}
    t_image, t_step = interleaved(lambda: image.run(None, {"x": frame}), lambda: step.run(None, step_feed), repeat)
    t_step2, t_window = interleaved(
        lambda: step.run(None, step_feed), lambda: clip.run(None, {"x": window}), max(3, repeat // 5)
    )
    return (
        {"backbone_s": t_image, "step_s": t_step, "ratio": t_step / t_image},
        {"step_s": t_step2, "window_s": t_window, "ratio": t_window / t_step2},
    )


def bench_training(net, repeat: int) -> dict:
    import surgery

    backbone, head = surgery.split(net)
    clip_model, head_model = surgery.to_torch(net).train(), surgery.to_torch(head).train()
    clips = torch.rand(4, FRAMES, 3, SIZE, SIZE)
    labels = torch.arange(4)
    with torch.no_grad():
        cached = surgery.to_torch(backbone).eval()(clips.flatten(0, 1)).unflatten(0, (4, FRAMES))

    def trainer(model, given):
        optimizer = torch.optim.SGD(model.param_groups(lr=0.01), momentum=0.9)

        def step():
            loss = torch.nn.functional.cross_entropy(model(given), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    t_clip, t_head = interleaved(trainer(clip_model, clips), trainer(head_model, cached), repeat)
    return {"clip_s": t_clip, "head_s": t_head, "ratio": t_head / t_clip}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    net = clip_net()
    with tempfile.TemporaryDirectory() as tmp:
        per_frame, window = bench_streaming(net, Path(tmp), args.repeat)
    print_row("step model per frame vs one backbone pass (goal <= 1.2x)", per_frame, "step_s", "backbone_s")
    print_row(f"recompute a {FRAMES}-frame window vs step model, per frame", window, "window_s", "step_s")
    print_row(
        "head train step on cached features vs whole clip model",
        bench_training(net, max(3, args.repeat // 4)),
        "head_s",
        "clip_s",
    )


if __name__ == "__main__":
    main()
