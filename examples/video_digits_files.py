"""Video classification from real video files, end to end, on two workers.

The moving-digits clips of `video_digits.py` (11 paths, 40 frames, the digit random) are
written as H.264 `.mp4` files at 32x32, one folder per class. Then, as a user with a
folder of videos would:

1. `surgery features` under torchrun, 2 workers: each decodes its share of the files
   (PyAV), preprocesses as the spec says (here the default: gray, [0, 1], the CNN's
   8x8) and caches the frozen backbone's features (resumable; a manifest at the end);
2. `examples/train_head_ddp.py` under torchrun, 2 ranks: the spec's LSTM head trains on
   the cached features with DistributedDataParallel; held-out accuracy;
3. `surgery stream` with the trained head over one held-out file, frame by frame.

    python examples/video_digits_files.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import video_digits  # noqa: E402

SPEC = ROOT / "specs" / "digits_video.prototxt"
SCALE = 4  # 8x8 digits drawn at 32x32: the decoder scales them back down


def write_dataset(folder: Path, per_class: int, seed: int, frames: int = video_digits.FRAMES) -> int:
    """``folder/<class>/<n>.mp4`` for ``per_class`` clips of each class; how many."""
    import av

    clips, labels = video_digits.make_clips(per_class, seed, frames)
    pixels = (np.clip(clips[:, :, 0], 0, 1) * 255).round().astype(np.uint8)
    for index, (clip, label) in enumerate(zip(pixels, labels)):
        target = folder / f"{label:02d}" / f"{index:04d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(target), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width = stream.height = 8 * SCALE
            stream.pix_fmt = "yuv420p"
            for frame in clip:
                image = np.repeat(np.kron(frame, np.ones((SCALE, SCALE), np.uint8))[..., None], 3, axis=2)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return len(labels)


def torchrun(*args: str) -> str:
    """Run a command on 2 local workers; its output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout


def run(per_class: int = 40, test_per_class: int = 10, epochs: int = 30, work: Path | None = None) -> dict:
    """The whole path; its figures."""
    import surgery

    with tempfile.TemporaryDirectory(prefix="video-digits-") as temp:
        base = Path(work or temp)
        start = time.perf_counter()
        count = write_dataset(base / "videos" / "train", per_class, seed=0)
        count += write_dataset(base / "videos" / "test", test_per_class, seed=1)
        results: dict = {"videos": count, "write_seconds": time.perf_counter() - start}
        rates = []
        for part in ("train", "test"):
            out = torchrun("-m", "surgery.cli", "features", str(SPEC), str(base / "videos" / part),
                           "-o", str(base / "features" / part), "-q")  # fmt: skip
            rates += [float(r) for r in re.findall(r"([\d.]+) frames/s", out)]
        results["features_fps_per_worker"] = float(np.mean(rates))
        out = torchrun(str(ROOT / "examples" / "train_head_ddp.py"), str(SPEC), str(base / "features" / "train"),
                       "--test", str(base / "features" / "test"), "--epochs", str(epochs),
                       "--save", str(base / "head.pt"))  # fmt: skip
        results["accuracy"] = float(re.search(r"held-out accuracy ([\d.]+)%", out).group(1)) / 100
        results["ranks_agree"] = "max |difference| 0" in out
        video = sorted((base / "videos" / "test" / "05").glob("*.mp4"))[0]
        streamed = surgery.stream(SPEC, str(video), weights=base / "head.pt")
        results["stream_class"] = int(streamed.scores.argmax())
        results["stream_fps"] = streamed.fps
        results["seconds"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40, help="training videos per class")
    parser.add_argument("--test-per-class", type=int, default=10, help="held-out videos per class")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    r = run(args.per_class, args.test_per_class, args.epochs)
    print(
        f"{r['videos']} .mp4 files; features on 2 workers: {r['features_fps_per_worker']:.0f} frames/s each; "
        f"LSTM head trained with DDP on 2 ranks (weights agree: {r['ranks_agree']}): held-out accuracy "
        f"{r['accuracy']:.1%} (chance {1 / video_digits.CLASSES:.1%}); stream of a class-05 file: class "
        f"{r['stream_class']:02d}, {r['stream_fps']:.0f} frames/s; {r['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
