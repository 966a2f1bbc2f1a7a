"""Pretrained weights named the way torchvision documents them, resolved to the file its
own cache would hold: never downloaded, never read by ``inspect`` / ``plan``, hash-checked
when ``apply`` reads them.

``torch { factory: "torchvision.models:resnet18" pretrained: "IMAGENET1K_V1" }`` (or
``DEFAULT``, or ``ResNet18_Weights.IMAGENET1K_V1``, or the same name written as the
builder's ``weights`` keyword in ``kwargs``) finds the builder's weights enum from its
``weights`` annotation, and the enum's URL gives the file:
``$TORCH_HOME/hub/checkpoints/<name>-<sha256 prefix>.<ext>``. The factory itself is called
without weights (on the meta device), so it never downloads or loads anything.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from surgery.emitters.files import sha256_file
from surgery.errors import ModelFormatError, SpecError, did_you_mean


@dataclass
class Pretrained:
    """Weights a torch source names: where they live, and what they say about the net."""

    name: str  # the enum member's full name, "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    path: Path
    hash_prefix: str | None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    #: (repo id, file name, revision) for weights in the Hugging Face cache (timm's)
    hub: tuple[str, str, str | None] | None = None

    def record(self, sha256: str | None = None) -> dict[str, Any]:
        """What the report keeps of them."""
        out: dict[str, Any] = {"name": self.name, "url": self.url, "file": str(self.path)}
        out["cache"] = "huggingface" if self.hub is not None else "torch.hub"
        if sha256 is not None:
            out["sha256"] = sha256
        if self.preprocessing:
            out["preprocessing"] = self.preprocessing
        if self.categories:
            out["categories"] = self.categories
        return out


def split_pretrained(pretrained: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The weights' name (from ``pretrained:`` or a ``weights`` keyword written as a
    string, as torchvision's docs show it) and the factory's arguments without it."""
    named = arguments.get("weights")
    if isinstance(named, str):
        if pretrained and pretrained != named:
            raise SpecError(
                f"pretrained {pretrained!r} and kwargs weights {named!r} name different weights",
                fix="keep one of them",
                subject=pretrained,
            )
        pretrained = named
        arguments = {k: v for k, v in arguments.items() if k != "weights"}
    return pretrained, arguments


def resolve(build: Callable[..., Any], text: str, factory: str) -> Pretrained:
    """The weights ``text`` names for the builder ``build`` (a torchvision-style builder
    whose ``weights`` parameter is annotated with its weights enum)."""
    enum = _weights_enum(build, factory)
    try:
        weights = enum.verify(text)
    except (ValueError, KeyError):
        names = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise SpecError(
            f"{factory!r} has no pretrained weights {text!r}",
            fix=did_you_mean(text.split(".")[-1], names) or f"one of {', '.join(names)}",
            subject=text,
        ) from None
    found = hub_checkpoint(f"{type(weights).__name__}.{weights.name}", weights.url)
    found.preprocessing = _preprocessing(weights)
    found.categories = list(weights.meta.get("categories") or [])
    return found


def hub_checkpoint(name: str, url: str) -> Pretrained:
    """Weights at ``url`` as torch.hub caches them: ``$TORCH_HOME/hub/checkpoints/<file>``,
    the sha256 prefix in the file name (``resnet18-f37072fd.pth``) checked when read."""
    file_name = Path(urlparse(url).path).name
    found = re.search(r"-([a-f0-9]+)\.", file_name)
    return Pretrained(
        name=name, url=url, path=_hub_dir() / "checkpoints" / file_name, hash_prefix=found.group(1) if found else None
    )


def _hub_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir())


def _weights_enum(build: Callable[..., Any], factory: str) -> Any:
    try:
        from torchvision.models import WeightsEnum
    except ImportError:
        raise SpecError(
            "pretrained weights by name need torchvision", fix="pip install torchvision", subject=factory
        ) from None
    try:
        hints = typing.get_type_hints(build)
    except Exception:  # noqa: BLE001  (unresolvable annotations: there is no enum to find)
        hints = {}
    annotation = hints.get("weights")
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, WeightsEnum):
            return candidate
    raise SpecError(
        f"{factory!r} takes no torchvision weights enum (its `weights` parameter names none)",
        fix="name a torchvision builder (torchvision.models:resnet18), or give a state_dict file as weights:",
        subject=factory,
    )


def _preprocessing(weights: Any) -> dict[str, Any]:
    """The weights' input transform as plain values (resize, crop, mean, std, ...)."""
    try:
        transform = weights.transforms()
    except Exception:  # noqa: BLE001  (a transform that cannot be built: nothing to record)
        return {}
    out: dict[str, Any] = {"transform": type(transform).__name__}
    for key, value in vars(transform).items():
        if key.startswith("_") or key == "training":
            continue
        value = getattr(value, "value", value)  # InterpolationMode.BILINEAR -> "bilinear"
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (str, int, float, bool, list)) or value is None:
            out[key] = value
    return out


def require_file(weights: Pretrained) -> None:
    """The cache file must be there; otherwise say where to place it (never download)."""
    if weights.path.is_file():
        return
    if weights.hub is not None:
        repo, file_name, revision = weights.hub
        raise SpecError(
            f"pretrained weights {weights.name} are not in the Hugging Face cache: {str(weights.path)!r} does "
            "not exist",
            fix=f"run `surgery fetch SPEC` (downloads {weights.url}), or on a machine that is online "
            f"`huggingface-cli download {repo} {file_name}{f' --revision {revision}' if revision else ''}` and "
            f"copy its cache folder {weights.path.parent.parent.parent} here",
            subject=weights.name,
        )
    raise SpecError(
        f"pretrained weights {weights.name} are not in torch's cache: {str(weights.path)!r} does not exist",
        fix=f"run `surgery fetch SPEC` (downloads {weights.url}), or place that file at {weights.path}",
        subject=weights.name,
    )


def check_hash(weights: Pretrained) -> str:
    """The file's sha256, checked against the prefix in its name as torchvision checks it."""
    sha256 = sha256_file(weights.path)[0]
    if weights.hash_prefix and not sha256.startswith(weights.hash_prefix):
        said = "the cache's blob name" if weights.hub is not None else "the name"
        raise ModelFormatError(
            f"pretrained weights file {str(weights.path)!r} is damaged or not {weights.name}: its sha256 "
            f"starts {sha256[: min(len(weights.hash_prefix), 16)]}, {said} says {weights.hash_prefix[:16]}",
            fix=f"delete it and run `surgery fetch SPEC` (or download {weights.url} again)",
        )
    return sha256


def hub_cache() -> Path:
    """huggingface_hub's cache folder, by its own environment rules."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "huggingface" / "hub"


def fetch(weights: Pretrained, progress: bool = True) -> bool:
    """Download the weights into torch's cache with the hash check; False when they were
    there already (and whole)."""
    if weights.path.is_file():
        check_hash(weights)
        return False
    if weights.hub is not None:
        return _fetch_from_hub(weights)
    import torch.hub

    try:
        weights.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SpecError(
            f"cannot make torch's cache folder {str(weights.path.parent)!r}: {error.strerror or error}",
            fix="point TORCH_HOME at a folder you can write to (or unset it for ~/.cache/torch)",
        ) from None
    try:
        torch.hub.download_url_to_file(weights.url, str(weights.path), weights.hash_prefix, progress=progress)
    except RuntimeError as error:  # the hash did not match: torch.hub removed the file
        raise ModelFormatError(f"downloaded {weights.url}: {error}") from None
    except OSError as error:
        raise SpecError(
            f"cannot download {weights.url}: {error}",
            fix=f"place the file at {weights.path} by other means (the machine may be offline)",
        ) from None
    return True


def _fetch_from_hub(weights: Pretrained) -> bool:
    """Download into the Hugging Face cache with huggingface_hub (its progress bar; the
    blob is named by its sha256, checked after)."""
    assert weights.hub is not None
    repo, file_name, revision = weights.hub
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SpecError("downloading from the Hugging Face Hub needs huggingface_hub", fix="pip install timm") from None
    try:
        path = hf_hub_download(repo, file_name, revision=revision, cache_dir=str(hub_cache()))
    except Exception as error:  # noqa: BLE001  (offline, no such repo, a proxy: say so, with its words)
        raise SpecError(
            f"cannot download {weights.url}: {type(error).__name__}: {error}",
            fix="the machine may be offline: download it elsewhere and copy the cache folder here",
        ) from None
    weights.path = Path(path)
    blob = weights.path.resolve().name
    weights.hash_prefix = blob if len(blob) == 64 else None
    check_hash(weights)
    return True
