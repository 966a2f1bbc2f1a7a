"""Train a new embedding contrastively, with a projection head that leaves at deploy.

`specs/digits_contrastive.prototxt` keeps the digits CNN's convolutions (frozen), puts a new
32-d `embed` layer on them and a projection head (`proj.fc1` -> ReLU -> `proj.fc2`) that is
train-only: in train mode the emitted model returns both, in eval mode the embedding alone,
and the deploy ONNX has no projection head. This trains `embed` and the head with an NT-Xent
loss on two augmentations of each image (shifted by up to a pixel, with noise), labels
unused, then measures how well the frozen embedding separates the ten digits: the
nearest-neighbour accuracy (cosine, against the training images' embeddings) of the held-out
images as they are and shifted / noisy as the augmentations make them, before and after.
The random-init embedding of the trained convolutions already separates clean digits; what
the contrastive training adds is invariance to the shifts.

    python examples/contrastive_digits.py     # needs scikit-learn (the `examples` extra)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import surgery

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import digits_tensors

ROOT = Path(__file__).resolve().parent.parent


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel each way (zeros come in) and add noise."""
    padded = F.pad(images, (1, 1, 1, 1))
    shifts = torch.randint(0, 3, (len(images), 2), generator=generator)
    out = torch.stack([padded[i, :, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(shifts.tolist())])
    return out + torch.randn(out.shape, generator=generator) * 0.1


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss: each view must pick its twin among the other 2N - 1 (L2-normalised)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.t() / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(z1)
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, twins)


def nearest_neighbour_accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, ...], queries: torch.Tensor) -> float:
    """Accuracy of the label of the closest training embedding (cosine) for ``queries``
    (the held-out images, as they are or augmented)."""
    x_train, y_train, _, y_test = data
    model.eval()
    with torch.no_grad():
        bank, found = F.normalize(model(x_train), dim=1), F.normalize(model(queries), dim=1)
    return (y_train[(found @ bank.t()).argmax(1)] == y_test).float().mean().item()


def main(epochs: int = 15) -> tuple[tuple[float, float], tuple[float, float]]:
    """Train; returns the nearest-neighbour accuracy before and after."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = surgery.apply(ROOT / "specs" / "digits_contrastive.prototxt", Path(tmp) / "contrastive")
        model = surgery.load_torch_folder(result.out_dir / "torch")
    data = digits_tensors()
    shifted = augment(data[2], torch.Generator().manual_seed(2))  # the held-out images, shifted / noisy
    before = nearest_neighbour_accuracy(model, data, data[2]), nearest_neighbour_accuracy(model, data, shifted)
    print(f"before: nearest-neighbour accuracy {before[0]:.4f} held-out, {before[1]:.4f} held-out shifted")
    optimizer = torch.optim.Adam(model.param_groups(lr=3e-3))
    generator = torch.Generator().manual_seed(1)
    x_train = data[0]
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), 128):
            images = x_train[order[start : start + 128]]
            first, second = model(augment(images, generator)), model(augment(images, generator))
            loss = nt_xent(first["proj.fc2"], second["proj.fc2"])  # the head exists in train mode only
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
        print(f"epoch {epoch + 1}/{epochs}: NT-Xent {total / len(x_train):.4f}")
    after = nearest_neighbour_accuracy(model, data, data[2]), nearest_neighbour_accuracy(model, data, shifted)
    print(f"after:  nearest-neighbour accuracy {after[0]:.4f} held-out, {after[1]:.4f} held-out shifted")
    return before, after


if __name__ == "__main__":
    main()
