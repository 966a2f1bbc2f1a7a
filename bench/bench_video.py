"""Video benchmark: torchvision vgg16's convolutions (random init, 32x32 frames, cut at the
last pooling layer) as a frozen per-frame backbone, an LSTM(256) head; ratios measured side
by side:

1. the streaming step model per frame vs one backbone pass (onnxruntime, batch 1; goal
   <= 1.2x: the state costs next to nothing);
2. recomputing a 40-frame window per new frame (the clip model) vs the step model per frame;
3. one head training step (SGD) on cached features vs one step of the whole clip model with
   the backbone frozen (torch, 4 clips of 40 frames);
4. from video files (.mp4, 64x64, decoded by PyAV and resized to 32x32): `surgery features`
   throughput in frames per second (decode + preprocess + backbone, as each worker reports
   it) of 2 workers under torchrun together vs 1 worker (on 2 cores expect <= 2x);
5. `surgery stream` per frame (decode + preprocess + step model) vs the step model alone in
   the same run (goal <= 1.2x: decoding must not dominate);
6. peak memory of `surgery features --every-frame` over a 2,000-frame video vs a 200-frame
   one, each in a fresh process (bounded by a batch of frames: about 1.0x).

Run: ``python bench/bench_video.py`` (needs torchvision and onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
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


FILES_SPEC = """\
source {{ torch {{ factory: "torchvision.models:vgg16" }} input_shape: [1, 3, {size}, {size}] }}
seed: 1
edit {{ sequence {{ at: "features.30" frames: {frames}
                  layer {{ name: "lstm" type: "LSTM" recurrent_param {{ num_output: 256 return_sequences: false }} }}
                  layer {{ name: "scores" type: "InnerProduct" inner_product_param {{ num_output: 11 }} }} }} }}
edit {{ lr {{ up_to: "features.30" lr_mult: 0 }} }}
"""


def write_videos(folder: Path, count: int, frames: int = FRAMES, size: int = 64) -> None:
    import av

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        with av.open(str(folder / f"clip{index:03d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for _ in range(frames):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def _features_rate(spec: Path, videos: Path, out: Path, workers: int) -> float:
    """Frames per second of ``surgery features`` over ``videos``: the sum of what each
    worker reports (decode + preprocess + backbone; start-up, planning and loading left out)."""
    cli = ["-m", "surgery.cli", "features", str(spec), str(videos), "-o", str(out), "-q"]
    command = [sys.executable, *cli]
    if workers > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return sum(float(rate) for rate in re.findall(r"([\d.]+) frames/s", done.stdout))


def _features_peak_mib(spec: Path, videos: Path, out: Path) -> float:
    # The child's own high-water mark: VmHWM belongs to the address space exec made, while
    # ru_maxrss survives fork and exec on Linux and gave the parent's peak (6792 vs 6792 MiB).
    code = (
        "import re, surgery\n"
        f"surgery.features({str(spec)!r}, {str(videos)!r}, {str(out)!r}, stride=1)\n"
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def bench_memory(workdir: Path) -> dict:
    spec = workdir / "vgg_clip.prototxt"
    write_videos(workdir / "short", 1, frames=200)
    write_videos(workdir / "long", 1, frames=2000)
    short = _features_peak_mib(spec, workdir / "short", workdir / "f-short")
    long = _features_peak_mib(spec, workdir / "long", workdir / "f-long")
    return {"short_mib": short, "long_mib": long, "ratio": long / short}


def bench_files(workdir: Path, repeat: int) -> tuple[dict, dict]:
    import surgery

    spec = workdir / "vgg_clip.prototxt"
    spec.write_text(FILES_SPEC.format(size=SIZE, frames=FRAMES))
    write_videos(workdir / "videos", 16)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_ in range(repeat):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            rates[workers].append(_features_rate(spec, workdir / "videos", workdir / f"f{round_}-{workers}", workers))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    write_videos(workdir / "long", 1, frames=400)  # sustained: start-up costs spread over 400 frames
    net = surgery.plan(spec, shapes_only=False).net
    surgery.stream(net, str(workdir / "videos" / "clip000.mp4"))  # warm-up
    streamed = surgery.stream(net, str(workdir / "long" / "clip000.mp4"))
    per_frame = {"stream_s": streamed.seconds / streamed.frames, "step_s": streamed.step_seconds / streamed.frames}
    return {"one_fps": one, "two_fps": two, "ratio": two / one}, per_frame | {
        "ratio": per_frame["stream_s"] / per_frame["step_s"]
    }


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
    try:
        import av  # noqa: F401
    except ImportError:
        print("video files: skipped (pip install 'surgery-nets[video]')")
        return
    with tempfile.TemporaryDirectory() as tmp:
        workers, streamed = bench_files(Path(tmp), max(1, args.repeat // 10))
        memory = bench_memory(Path(tmp))
    print(
        f"features from .mp4, 2 workers vs 1 (frames/s, expect <= 2x on 2 cores): {workers['ratio']:.2f}x "
        f"({workers['two_fps']:.0f} vs {workers['one_fps']:.0f} frames/s)"
    )
    print_row("stream per frame (decode + step) vs step model alone (goal <= 1.2x)", streamed, "stream_s", "step_s")
    print(
        f"features peak memory, 2,000-frame video vs 200 (every frame; bounded): {memory['ratio']:.2f}x "
        f"({memory['long_mib']:.0f} MiB vs {memory['short_mib']:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
