"""Fine-tune the GoogLeNet that `specs/googlenet_flowers.prototxt` makes, as Caffe would
have: BVLC's quick_solver (poly, power 0.5, momentum 0.9, weight decay 2e-4; shortened to
60 iterations for the miniature network) through the emitted recipe, the three heads'
losses weighted 0.3 / 0.3 / 1 as in Caffe's net.

The data is synthetic (no flowers ship with the repo): 10 of the 102 classes, each a seeded
random image; a sample is its class image plus noise, so the loss has somewhere to go.

    python examples/finetune_googlenet_caffe.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import surgery

ROOT = Path(__file__).resolve().parent.parent


def synthetic_batch(prototypes: torch.Tensor, batch: int, generator: torch.Generator) -> tuple:
    labels = torch.randint(0, len(prototypes), (batch,), generator=generator)
    noise = torch.randn((batch, *prototypes.shape[1:]), generator=generator) * 0.3
    return prototypes[labels] + noise, labels


def main(iterations: int | None = None) -> list[float]:
    """Train; returns the loss of every iteration."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = surgery.apply(ROOT / "specs" / "googlenet_flowers.prototxt", Path(tmp) / "flowers")
        model = surgery.load_torch_folder(result.out_dir / "torch")
    solver = model.SOLVER
    optimizer, scheduler = model.caffe_solver()
    print(f"solver: {solver['type']}, lr_policy {solver['lr_policy']}, base_lr {solver['base_lr']:.6g}, "
          f"max_iter {solver['max_iter']}; loss weights {model.LOSS_WEIGHTS}")  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    batch = 32  # the miniature takes 32x32 crops (its train_val's crop_size)
    prototypes = torch.randn((10, 3, 32, 32), generator=generator)
    trunk_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses = []
    model.train()
    for iteration in range(iterations or solver["max_iter"]):
        images, labels = synthetic_batch(prototypes, batch, generator)
        optimizer.zero_grad()
        for _ in range(solver["iter_size"]):
            loss = model.weighted_loss(model(images), F.cross_entropy, labels)
            loss.backward()
        rates = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if iteration % 10 == 0 or iteration == (iterations or solver["max_iter"]) - 1:
            shown = ", ".join(f"{rate:.6g}" for rate in rates)
            print(f"iteration {iteration:3d}: lr {shown} (per lr_mult group), weighted loss {losses[-1]:.4f}")
    print(f"mean weighted loss, first 10 iterations {sum(losses[:10]) / 10:.4f}, last 10 {sum(losses[-10:]) / 10:.4f}")
    frozen_same = all(torch.equal(p, trunk_before[n]) for n, p in model.named_parameters() if n in trunk_before)
    print(f"frozen trunk unchanged: {frozen_same}")
    return losses


if __name__ == "__main__":
    main()
