"""Video classification from a pretrained per-frame CNN: an LSTM head on moving digits.

Each clip is 40 frames of one scikit-learn digit (8x8) moving along one of 11 paths:
left->right, right->left, down, up, the four diagonals both ways... in pairs that visit the
same positions in opposite orders, two circles (clockwise, anticlockwise) and standing
still. The digit itself is random, so no single frame tells the class: only the order of
the frames does. `specs/digits_video.prototxt` makes the clip model (the shipped digits CNN
frozen, per frame; an LSTM head); its backbone runs once over every clip (cached features),
the head trains on them, and a frame-averaging baseline head (TemporalPooling AVE + the
same classifier) trains on the same features.

    python examples/video_digits.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

import surgery

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_video.prototxt"
FRAMES, CLASSES, REACH = 40, 11, 3
LINES = [((-1, 0), (1, 0)), ((0, -1), (0, 1)), ((-1, -1), (1, 1)), ((1, -1), (-1, 1))]


def path(label: int, frames: int = FRAMES) -> np.ndarray:
    """(frames, 2) integer (dx, dy) offsets of class ``label``'s path."""
    t = np.linspace(0.0, 1.0, frames)
    if label < 8:  # a line, forwards (even) or backwards (odd)
        start, end = (np.array(p, float) * REACH for p in LINES[label // 2])
        if label % 2:
            start, end = end, start
        points = start + (end - start) * t[:, None]
    elif label < 10:  # a circle, clockwise or anticlockwise
        angle = 2 * math.pi * t * (1 if label == 8 else -1)
        points = np.stack([np.cos(angle), np.sin(angle)], 1) * (REACH - 0.5)
    else:  # still
        points = np.zeros((frames, 2))
    return np.rint(points).astype(int)


def make_clips(per_class: int, seed: int, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Clips (N, frames, 1, 8, 8) in [0, 1] (plus a little noise) and their labels."""
    rng = np.random.default_rng(seed)
    digits = load_digits().images.astype(np.float32) / 16.0
    labels = np.repeat(np.arange(CLASSES), per_class)
    clips = np.zeros((len(labels), frames, 1, 8, 8), np.float32)
    canvas = np.zeros((8 + 2 * REACH, 8 + 2 * REACH), np.float32)
    for index, label in enumerate(labels):
        canvas[:] = 0
        canvas[REACH : REACH + 8, REACH : REACH + 8] = digits[rng.integers(len(digits))]
        for frame, (dx, dy) in enumerate(path(label, frames)):
            clips[index, frame, 0] = canvas[REACH - dy : REACH - dy + 8, REACH - dx : REACH - dx + 8]
    clips += rng.normal(0, 0.05, clips.shape).astype(np.float32)
    return clips, labels


def cached_features(backbone: torch.nn.Module, clips: np.ndarray) -> torch.Tensor:
    """The frozen backbone run once over every frame: (N, T, F)."""
    frames = torch.from_numpy(clips).flatten(0, 1)
    with torch.no_grad():
        return torch.cat([backbone(chunk) for chunk in frames.split(4096)]).unflatten(0, clips.shape[:2])


def train_head(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(head.param_groups(lr=3e-3))
    head.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(32):
            loss = torch.nn.functional.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def accuracy(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return float((head(features).argmax(1) == labels).float().mean())


def baseline_net(frames: int) -> surgery.Net:
    """The same backbone with a frame-averaging head."""
    net = surgery.load(surgery.zoo.digits_cnn(), (1, 1, 8, 8))
    surgery.sequence(
        net,
        [
            'name: "mean" type: "TemporalPooling" pooling_param { pool: AVE }',
            'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }',
        ],
        at="features.pool2",
        frames=frames,
        seed=7,
    )
    surgery.lr(net, up_to="features.pool2", lr_mult=0)
    return net


def run(
    per_class: int = 60, test_per_class: int = 20, epochs: int = 30, frames: int = FRAMES, seed: int = 0
) -> dict[str, float]:
    """Make the data, cache the backbone's features, train both heads; held-out accuracies."""
    start = time.perf_counter()
    train_x, train_y = make_clips(per_class, seed, frames)
    test_x, test_y = make_clips(test_per_class, seed + 1, frames)
    clip_net = surgery.plan(SPEC, shapes_only=False).net
    backbone, lstm_head = surgery.split(clip_net)
    backbone_model = surgery.to_torch(backbone).eval()
    train_f, test_f = cached_features(backbone_model, train_x), cached_features(backbone_model, test_x)
    train_t, test_t = torch.from_numpy(train_y), torch.from_numpy(test_y)
    results = {}
    for name, head_net in (("lstm", lstm_head), ("frame_average", surgery.split(baseline_net(frames))[1])):
        head = surgery.to_torch(head_net)
        train_head(head, train_f, train_t, epochs, seed)
        results[name] = accuracy(head, test_f, test_t)
    results["seconds"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60, help="training clips per class")
    parser.add_argument("--test-per-class", type=int, default=20, help="held-out clips per class")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    results = run(args.per_class, args.test_per_class, args.epochs)
    print(
        f"held-out accuracy, {CLASSES} classes, {FRAMES} frames: LSTM head {results['lstm']:.1%}, "
        f"frame-averaging head {results['frame_average']:.1%} (chance {1 / CLASSES:.1%}); "
        f"{results['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
