"""Small transformers image models for tests and tools/transformer_table.py: configs of
each family at 32x32 (seconds to build, export and import), and the logits-only wrapper
torch's TorchScript exporter needs (it cannot return a ModelOutput)."""

from __future__ import annotations

import torch


def small_configs(labels: list[str] | None = None) -> dict[str, object]:
    """Family name -> a small config of it with ``labels`` (default five unnamed) as classes."""
    import transformers as t

    names = labels or [f"LABEL_{i}" for i in range(5)]
    classes = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    vit = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    return {
        "vit": t.ViTConfig(**vit, image_size=32, patch_size=8, **classes),
        "dinov2": t.Dinov2Config(**vit, image_size=32, patch_size=8, **classes),
        "convnext": t.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], **classes),
        "swin": t.SwinConfig(
            image_size=32, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4, **classes
        ),
        "resnet": t.ResNetConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], embedding_size=8, **classes),
        "mobilenet_v2": t.MobileNetV2Config(image_size=32, depth_multiplier=0.35, **classes),
    }


class Logits(torch.nn.Module):
    """A transformers classifier's logits alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits
