"""Train a clip model's head on cached features with DistributedDataParallel, one
process per GPU (or CPU worker), started by torchrun. More processes than GPUs share them
(over gloo: NCCL refuses two ranks on one GPU).

The head is the spec's, emitted by surgery (its param groups honour lr_mult); the
features are `surgery features` output, one ``<label>/<clip>.npy`` per clip (the first
folder of a clip's name is its class; classes are numbered in sorted order). Each rank
trains on its share of every batch; at the end the ranks compare their weights, which
DDP keeps equal, and rank 0 saves them (for `surgery stream --weights`).

    torchrun --standalone --nproc_per_node=2 examples/train_head_ddp.py \\
        specs/digits_video.prototxt FEATS/train --test FEATS/test --save head.pt
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import surgery


def load_features(folder: Path, classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every ``<label>/<clip>.npy`` under ``folder``: features (N, T, F), labels (N,)."""
    files = sorted(folder.glob("*/*.npy"))
    if not files:
        raise SystemExit(f"no <label>/<clip>.npy feature files in {folder}")
    classes = classes or sorted({f.parent.name for f in files})
    features = torch.from_numpy(np.stack([np.load(f) for f in files]))
    labels = torch.tensor([classes.index(f.parent.name) for f in files])
    return features, labels, classes


def device_and_backend() -> tuple[torch.device, str]:
    """This rank's device and the process group's backend: NCCL with a GPU per rank; gloo
    where the ranks on a machine outnumber its GPUs (they share them) or on CPUs."""
    gpus = torch.cuda.device_count()
    if not gpus:
        return torch.device("cpu"), "gloo"
    local, per_machine = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return torch.device(f"cuda:{local % gpus}"), "nccl" if per_machine <= gpus else "gloo"


def train(
    spec: str, train_dir: Path, *, epochs: int, batch: int, lr: float, seed: int
) -> tuple[DistributedDataParallel, list]:
    """The DDP-wrapped head after ``epochs`` over ``train_dir``, and the class names."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device, _ = device_and_backend()
    _, head_net = surgery.split(surgery.plan(spec, shapes_only=False).net)
    head = surgery.to_torch(head_net).to(device)
    model = DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(head.param_groups(lr=lr))
    features, labels, classes = load_features(train_dir)
    generator = torch.Generator().manual_seed(seed)  # the same order on every rank
    model.train()
    for _ in range(epochs):
        for indices in torch.randperm(len(labels), generator=generator).split(batch):
            mine = indices[rank::world]  # this rank's share of the batch
            if len(mine) == 0:
                mine = indices[:1]  # every rank must take part in each step's all-reduce
            loss = torch.nn.functional.cross_entropy(model(features[mine].to(device)), labels[mine].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, classes


def ranks_agree(model: torch.nn.Module) -> float:
    """The largest difference between any rank's weights and rank 0's."""
    # on the parameters' own device: NCCL gathers GPU tensors only (gloo takes both)
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("train", type=Path, help="folder of <label>/<clip>.npy features")
    parser.add_argument("--test", type=Path, help="held-out features, same layout")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="rank 0 saves the trained head's state_dict here")
    args = parser.parse_args(argv)
    device, backend = device_and_backend()
    if device.type == "cuda":  # NCCL's collectives run on each rank's own GPU
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    model, classes = train(args.spec, args.train, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed)
    head = model.module
    difference = ranks_agree(head)
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks, weights agree: max |difference| {difference:.3g}")
        if args.test is not None:
            features, labels, _ = load_features(args.test, classes)
            head.eval()
            with torch.no_grad():
                device = next(head.parameters()).device
                accuracy = float((head(features.to(device)).argmax(1).cpu() == labels).float().mean())
            print(f"held-out accuracy {accuracy:.1%} ({len(labels)} clips, {len(classes)} classes)")
        if args.save is not None:
            torch.save({k: v.cpu() for k, v in head.state_dict().items()}, args.save)
    # every rank waits until rank 0 has saved before any tears the group down: a rank
    # destroying its group while another still works made gloo abort now and then
    dist.barrier()
    # DDP's reducer holds the group; left to the interpreter's exit it was destroyed
    # after the group, in gloo's worker threads, and aborted the rank (1 run in 24)
    del model
    gc.collect()
    dist.destroy_process_group()
    return 0 if difference == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
