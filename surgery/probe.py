"""Running part of a net on given inputs: the values of chosen blobs.

Rewrites that learn from data (collapse's least-squares fit) and parity checks need
activations in the middle of a net; this emits a throw-away torch model whose outputs are
those blobs, in eval mode, and leaves the net as it was.
"""

from __future__ import annotations

from surgery.ir import Net
from surgery.lazy_torch import torch


def blob_values(
    net: Net, blobs: list[str], inputs: list[torch.Tensor], device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The deploy-mode values of ``blobs`` for ``inputs`` (one tensor per net input),
    computed on ``device`` (default: where the inputs are)."""
    from surgery.emitters.torch_module import emit_torch

    with net.temporarily():
        for layer in list(net.layers()):
            layer.phase = None
        net.set_outputs(blobs)
        model = emit_torch(net, copy_weights=device is not None and device.type != "cpu").eval()
    if device is not None and device.type != "cpu":
        model, inputs = model.to(device), [value.to(device) for value in inputs]
    with torch.no_grad():
        out = model(*inputs)
    return {blobs[0]: out} if len(blobs) == 1 else dict(out)
