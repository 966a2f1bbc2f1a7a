"""Train the shipped digits CNN (surgery/zoo) on scikit-learn's digits dataset.

Offline: the dataset ships with scikit-learn. Deterministic: fixed seeds and split.
Writes the state_dict atomically to surgery/zoo/digits_cnn.pt and its metadata
(accuracy, split, checksum) to surgery/zoo/digits_cnn.json.

    python examples/train_digits.py            # about 20 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from surgery.zoo.digits import DigitsCNN

#: The checkout's copy of the shipped weights, beside this example (not the installed
#: package's, which a plain `pip install` puts in site-packages).
CHECKOUT_WEIGHTS = Path(__file__).resolve().parent.parent / "surgery" / "zoo" / "digits_cnn.pt"


def digits_tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Stratified 80/20 split of the 1797 digits, images scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=y.numpy())
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        logits = logits if isinstance(logits, torch.Tensor) else next(iter(logits.values()))
        return (logits.argmax(1) == y).float().mean().item()


def train(epochs: int, seed: int) -> tuple[DigitsCNN, float]:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_tensors(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        print(f"epoch {epoch + 1:3d}/{epochs}  held-out accuracy {accuracy(model, x_test, y_test):.4f}", flush=True)
    return model, accuracy(model, x_test, y_test)


def write_atomically(path: Path, write) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=CHECKOUT_WEIGHTS, help=f"where to write the state_dict (default {CHECKOUT_WEIGHTS})"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    model, acc = train(args.epochs, args.seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_atomically(args.out, lambda p: torch.save(state, p))
    meta = {
        "dataset": "sklearn.datasets.load_digits (1797 8x8 images, 10 classes), pixels / 16",
        "split": "stratified 80/20, sklearn train_test_split random_state=seed",
        "seed": args.seed,
        "epochs": args.epochs,
        "optimizer": "Adam lr 2e-3 weight_decay 1e-4, batch 64",
        "test_accuracy": round(acc, 4),
        "torch": torch.__version__,
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
    }
    write_atomically(args.out.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    print(
        f"held-out accuracy {acc:.4f}; wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB) "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
