"""Fine-tune the model `specs/digits_parity.prototxt` makes: even/odd digits.

Applies the spec (frozen trunk, new 2-way head with lr_mult 10), loads the emitted
standalone folder, and trains it with the parameter groups the spec's lr_mult defines.

    python examples/finetune_parity.py        # needs scikit-learn (the `examples` extra)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import surgery

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import accuracy, digits_tensors

ROOT = Path(__file__).resolve().parent.parent


def main(epochs: int = 5) -> float:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = surgery.apply(ROOT / "specs" / "digits_parity.prototxt", Path(tmp) / "parity")
        model = surgery.load_torch_folder(result.out_dir / "torch")
    x_train, y_train, x_test, y_test = digits_tensors()
    y_train, y_test = y_train % 2, y_test % 2
    trunk_before = model.features.conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.param_groups(lr=0.01, weight_decay=1e-4), momentum=0.9)
    print(f"before fine-tuning: held-out parity accuracy {accuracy(model, x_test, y_test):.4f}")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{epochs}: held-out parity accuracy {accuracy(model, x_test, y_test):.4f}")
    assert torch.equal(model.features.conv1.weight, trunk_before), "the frozen trunk must not move"
    return accuracy(model, x_test, y_test)


if __name__ == "__main__":
    main()
