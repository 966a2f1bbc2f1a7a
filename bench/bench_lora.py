"""A LoRA training step: surgery's emitted model (`edit { lora { } }`) vs PEFT's
`get_peft_model` on the same transformers ViT, the same adapters (rank 8 on the attention
projections and the MLP), the same batch, AdamW over the trainable parameters, timed
side by side in interleaved rounds (forward, cross-entropy, backward, step).

The ViT is 6 layers, 384 wide, 224x224 in 16x16 patches (random weights from its config,
`save_pretrained` into a temporary folder: no download). The step ratio's goal is <= 1.05x.

Run: ``python bench/bench_lora.py`` (needs transformers and peft; about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import interleaved

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, logits):
    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(logits(model, x), y)
        loss.backward()
        optimizer.step()

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    import peft
    import transformers

    import surgery

    config = transformers.ViTConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536, num_labels=10
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        transformers.AutoModelForImageClassification.from_config(config).save_pretrained(Path(tmp) / "vit")
        spec = Path(tmp) / "spec.prototxt"
        spec.write_text(
            'source { hf { path: "vit" } }\n'
            'edit { lr { match: "*" lr_mult: 0 } }\n'
            'edit { lora { match: "vit.layers.*.attention.*_proj" match: "vit.layers.*.mlp.fc*" rank: 8 alpha: 16 } }\n'
            'edit { lr { layer: "classifier" lr_mult: 1 } }\n'
        )
        ours = surgery.to_torch(surgery.plan(spec, shapes_only=False).net).train()
        ours.apply_lr_mults()
        base = transformers.AutoModelForImageClassification.from_pretrained(Path(tmp) / "vit", use_kernels=False)
        theirs = peft.get_peft_model(
            base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, modules_to_save=["classifier"])
        ).train()
    x, y = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 10, (args.batch,))
    our_step = _step(ours, torch.optim.AdamW(ours.param_groups(lr=1e-3)), x, y, lambda m, v: m(v))
    their_params = [p for p in theirs.parameters() if p.requires_grad]
    their_step = _step(theirs, torch.optim.AdamW(their_params, lr=1e-3), x, y, lambda m, v: m(pixel_values=v).logits)
    counted = (
        sum(p.numel() for g in ours.param_groups(lr=1.0) for p in g["params"]),
        sum(p.numel() for p in their_params),
    )
    t_theirs, t_ours = interleaved(their_step, our_step, args.repeat)
    label = f"LoRA train step: surgery vs PEFT (ViT 6x384, batch {args.batch})"
    print(
        f"{label:<60} {t_ours / t_theirs:6.2f}x  "
        f"({t_ours * 1e3:.0f} ms vs {t_theirs * 1e3:.0f} ms; trainable {counted[0]:,} vs {counted[1]:,})",
        flush=True,
    )


if __name__ == "__main__":
    main()
