"""A net's low-rank adapters in PEFT's format, both ways.

Writing: ``adapter_config.json`` (a LoRA config whose ``target_modules`` is the exact
regular expression of the adapted layers' names, with ``rank_pattern`` / ``alpha_pattern``
where ranks differ) and ``adapter_model.safetensors`` (``base_model.model.<layer>.lora_A.
weight``..., and the full weights of ``modules_to_save``: the other layers that train).
``PeftModel.from_pretrained(source_model, folder)`` loads it onto the source model: the
layer names are the source's module paths.

Reading (``lora { from_peft: "folder" }``): the same files, PEFT's key names mapped back
to layer names; the adapters' settings come from the config.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from surgery.emitters.files import FileLog, write_bytes
from surgery.errors import SpecError
from surgery.ir import Net
from surgery.ir.budget import check_bytes
from surgery.layers import lora

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def _most_common(values: dict[str, Any]) -> Any:
    return Counter(values.values()).most_common(1)[0][0]


def _pattern(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def modules_to_save(net: Net) -> list[str]:
    """Layers without an adapter that train (a blob with lr_mult > 0): PEFT saves them
    whole. A bare parameter that trains (a Constant layer: a class token) is refused:
    PEFT saves modules, not parameters."""
    found = []
    for layer in net.layers():
        if lora.settings(layer) is not None or not any(b.trainable and b.lr_mult > 0 for b in layer.blobs.values()):
            continue
        if layer.type == "Constant":
            raise SpecError(
                f"layer {layer.name!r} is a bare parameter that trains, which PEFT's format cannot hold (it saves "
                "modules, not parameters)",
                fix=f'freeze it (edit {{ lr {{ layer: "{layer.name}" lr_mult: 0 }} }}) or leave the peft output out',
                subject=layer.name,
            )
        found.append(layer.name)
    return found


def adapter_config(net: Net) -> dict[str, Any]:
    """PEFT's LoRA config for the net's adapters. Refuses what one config cannot say."""
    adapted: dict[str, dict[str, Any]] = {}
    for layer in net.layers():
        settings = lora.settings(layer)
        if settings is not None:
            adapted[layer.name] = settings
    if not adapted:
        raise SpecError(
            "output { peft { } } writes the net's low-rank adapters, and the spec adds none",
            fix='add edit { lora { match: "..." } }, or remove the peft output',
        )
    for field in ("dropout", "use_rslora"):
        if len({str(settings[field]) for settings in adapted.values()}) > 1:
            raise SpecError(
                f"the adapters differ in {field}, which PEFT's config holds once for all",
                fix=f"give every lora edit the same {field}",
            )
    ranks = {name: int(settings["rank"]) for name, settings in adapted.items()}
    alphas = {name: float(settings["alpha"]) for name, settings in adapted.items()}
    rank, alpha = _most_common(ranks), _most_common(alphas)
    first = next(iter(adapted.values()))
    return {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(first["dropout"]),
        "use_rslora": bool(first["use_rslora"]),
        "target_modules": _pattern(list(adapted)),
        "rank_pattern": {re.escape(n): r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {re.escape(n): a for n, a in alphas.items() if a != alpha},
        "modules_to_save": modules_to_save(net) or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "task_type": None,
        "base_model_name_or_path": (net.pretrained or {}).get("name"),
    }


def adapter_tensors(net: Net) -> dict[str, Any]:
    """PEFT's state dict of the adapters and of modules_to_save."""
    tensors = {}
    for layer in net.layers():
        if lora.settings(layer) is not None:
            for role in lora.ROLES:
                tensors[f"{PREFIX}{layer.name}.{role}.weight"] = layer.blobs[role].data.detach().float().contiguous()
    for name in modules_to_save(net):
        for role, blob in net.layer(name).blobs.items():
            tensors[f"{PREFIX}{name}.{role}"] = blob.data.detach().contiguous()
    return tensors


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise SpecError(
            "PEFT's adapter format needs safetensors", fix="pip install 'surgery-nets[hf]' (or safetensors alone)"
        ) from None
    return safetensors.torch


def write_adapter(net: Net, folder: Path, log: FileLog | None = None) -> None:
    """Write ``folder/adapter_config.json`` and ``folder/adapter_model.safetensors``."""
    save = _safetensors().save

    config = adapter_config(net)
    write_bytes(folder / CONFIG, (json.dumps(config, indent=2) + "\n").encode(), log)
    write_bytes(folder / WEIGHTS, save(adapter_tensors(net), metadata={"format": "pt"}), log)


# ------------------------------------------------------------------- reading
_CONFIG_LIMIT = 16 << 20


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PEFT LoRA folder's config and tensors (by PEFT's key names). Refuses what this
    adapter is not: another PEFT method, DoRA, a transposed (fan_in_fan_out) layout,
    trained biases, a pickle instead of safetensors."""
    from surgery.errors import ModelFormatError
    from surgery.untrusted import contained, read_regular

    if not (folder / CONFIG).exists():
        raise SpecError(
            f"{str(folder)!r} is not a PEFT adapter folder: it has no {CONFIG}",
            fix="point from_peft at the folder PeftModel.save_pretrained(...) wrote",
        )
    try:
        config = json.loads(read_regular(folder / CONFIG, CONFIG, _CONFIG_LIMIT))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{str(folder / CONFIG)!r} is not JSON: {error}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ModelFormatError(f"{str(folder / CONFIG)!r} is a {kind} adapter; surgery reads LoRA adapters")
    for field, allowed, why in (
        ("use_dora", (False, None), "DoRA"),
        ("fan_in_fan_out", (False, None), "a transposed (fan_in_fan_out) layout"),
        ("bias", ("none", None), "trained biases"),
    ):
        if config.get(field) not in allowed:
            raise ModelFormatError(f"the adapter in {str(folder)!r} uses {why} ({field}: {config.get(field)!r}), "
                                   "which surgery does not read")  # fmt: skip
    if not (folder / WEIGHTS).exists():
        pickled = (folder / "adapter_model.bin").exists()
        raise ModelFormatError(
            f"{str(folder)!r} has no {WEIGHTS}"
            + (" (its adapter_model.bin is a pickle: code, not data)" if pickled else ""),
            fix="save the adapter with safetensors (PEFT's save_pretrained does by default)",
        )
    path = contained(folder, WEIGHTS, "PEFT adapter weights")
    check_bytes(f"PEFT adapter weights {str(path)!r}", path.stat().st_size, subject=str(path))
    try:
        tensors = _safetensors().load_file(str(path))  # memory-mapped, its header checked
    except Exception as error:  # noqa: BLE001  (safetensors' own message, located)
        raise ModelFormatError(f"{str(path)!r} is not a safetensors file: {error}") from None
    return config, tensors


def alpha_for(config: dict[str, Any], name: str) -> float:
    """The layer's lora_alpha: the first ``alpha_pattern`` entry PEFT would match, else the config's."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(alpha)
    return float(config.get("lora_alpha", 8))


def layer_tensors(tensors: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """PEFT's keys as (adapters: layer -> {lora_A, lora_B}, saved modules: layer -> {role: tensor})."""
    from surgery.errors import ModelFormatError

    adapters: dict[str, dict[str, Any]] = {}
    saved: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise ModelFormatError(f"adapter key {key!r} does not start with {PREFIX!r}")
        rest = key[len(PREFIX) :]
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", rest)
        if match:
            adapters.setdefault(match.group(1), {})[match.group(2)] = tensor
            continue
        name, _, role = rest.rpartition(".")
        name = name.replace(".modules_to_save.default", "").replace(".modules_to_save", "")
        saved.setdefault(name, {})[role] = tensor
    for name, pair in adapters.items():
        if set(pair) != set(lora.ROLES):
            raise ModelFormatError(f"the adapter of {name!r} has {sorted(pair)} only; LoRA needs lora_A and lora_B")
    return adapters, saved


__all__ = [
    "CONFIG",
    "PREFIX",
    "WEIGHTS",
    "adapter_config",
    "adapter_tensors",
    "alpha_for",
    "layer_tensors",
    "modules_to_save",
    "read_adapter",
    "write_adapter",
]
