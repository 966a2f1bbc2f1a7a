"""timm's pretrained tags resolved to the file timm itself would read: never downloaded,
never read by ``inspect`` / ``plan``, hash-checked when ``apply`` reads them.

``torch { factory: "timm:resnet50" pretrained: "a1_in1k" }`` (or ``pretrained: "true"``,
or ``kwargs: '{"pretrained": true}'``, for timm's default tag) looks the tag up in timm's
registry. Weights on the Hugging Face Hub are found in its cache as huggingface_hub lays it
out: ``$HF_HUB_CACHE`` (else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)
``/models--timm--resnet50.a1_in1k/refs/main`` names the snapshot, whose
``model.safetensors`` (or ``pytorch_model.bin``) links to ``blobs/<sha256>``, found by
huggingface_hub's own ``try_to_load_from_cache``: the blob's name is the hash checked.
Weights at a plain URL go to torch's cache, as torchvision's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from surgery.errors import SpecError, did_you_mean
from surgery.importers.pretrained import Pretrained, hub_cache, hub_checkpoint

#: what timm reads from a Hub repository, in its order of preference
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm(factory: str) -> bool:
    """``timm:NAME`` or ``timm.models:NAME``."""
    return factory.partition(":")[0] in ("timm", "timm.models")


def resolve_timm(factory: str, tag: str) -> Pretrained:
    """The weights of ``tag`` ("" or "true": timm's default) for the timm model of ``factory``."""
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise SpecError("timm weights by tag need timm", fix="pip install timm", subject=factory) from None
    arch = factory.partition(":")[2]
    name = arch if tag in ("", "true", "True") else f"{arch}.{tag.removeprefix(arch + '.')}"
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{arch}.*")]
        raise SpecError(
            f"timm has no pretrained weights {name!r}",
            fix=did_you_mean(name.partition(".")[2], tags) or (f"one of {', '.join(tags)}" if tags else None),
            subject=tag or factory,
        )
    architecture = cfg.architecture or arch
    full = f"{architecture}.{cfg.tag}" if cfg.tag else architecture
    values = cfg.to_dict()
    if cfg.hf_hub_id:
        weights = _from_hub(full, cfg.hf_hub_id, getattr(cfg, "hf_hub_filename", None))
    elif cfg.url:  # a URL, or (URL, file name)
        weights = hub_checkpoint(full, cfg.url if isinstance(cfg.url, str) else cfg.url[0])
    else:
        raise SpecError(f"timm's {full!r} names no file to read its weights from", subject=tag or factory)
    weights.preprocessing = {k: values[k] for k in ("input_size", "crop_pct", "crop_mode", "interpolation",
                                                    "mean", "std") if k in values}  # fmt: skip
    weights.categories = _categories(values)
    return weights


def _from_hub(name: str, repo: str, filename: str | None) -> Pretrained:
    """The snapshot file huggingface_hub's own cache lookup finds (its refs, its layout);
    when none is cached, where the preferred file would be."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise SpecError("timm weights from the Hub need huggingface_hub", fix="pip install timm") from None
    repo_id, _, revision = repo.partition("@")
    candidates = (filename,) if filename else HUB_FILES
    chosen, path = candidates[0], None
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=str(hub_cache()), revision=revision or None)
        if isinstance(found, str):
            chosen, path = candidate, Path(found)
            break
    if path is None:  # not cached: say where it would be
        folder = hub_cache() / f"models--{repo_id.replace('/', '--')}"
        path = folder / "snapshots" / f"<{revision or 'main'} commit>" / chosen
    blob = path.resolve().name if path.is_symlink() else None  # the blob's name is its sha256
    return Pretrained(
        name=f"timm {name}",
        url=f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{chosen}",
        path=path,
        hash_prefix=blob if blob and len(blob) == 64 else None,
        hub=(repo_id, chosen, revision or None),
    )


def preprocess_of(weights: Pretrained) -> Any:
    """timm's data config as the net's preprocessing: resize to ``size / crop_pct``, centre
    crop to ``input_size``, mean and std in pixel units."""
    from surgery.preprocess import Preprocess

    values = weights.preprocessing
    if "mean" not in values or "std" not in values or "input_size" not in values:
        return None
    height, width = (int(v) for v in values["input_size"][1:])
    crop_pct = float(values.get("crop_pct") or 1.0)
    return Preprocess(
        channel_order="RGB",
        mean=tuple(round(float(m) * 255, 6) for m in values["mean"]),
        std=tuple(round(float(s) * 255, 6) for s in values["std"]),
        resize=(math.floor(min(height, width) / crop_pct),),  # timm's scale_size for a centre crop
        crop=(height,) if height == width else (height, width),
        interpolation=_interpolation(values.get("interpolation")),
        origin={"*": weights.name},
    )


def _interpolation(name: Any) -> str:
    from surgery.preprocess import INTERPOLATIONS

    upper = str(name or "bilinear").upper()
    return upper if upper in INTERPOLATIONS else "BILINEAR"


def _categories(values: dict[str, Any]) -> list[str]:
    """ImageNet's class names where timm knows the label set of these weights."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(values)
        return list(ImageNetInfo(subset).label_descriptions()) if subset else []
    except Exception:  # noqa: BLE001  (no label set known: the head stays unnamed)
        return []


__all__ = ["hub_cache", "is_timm", "preprocess_of", "resolve_timm"]
