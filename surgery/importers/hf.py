"""Hugging Face transformers as a source: ``source { hf { model: "google/vit-base-patch16-224" } }``
(read from the local Hugging Face cache, never downloaded) or ``hf { path: "folder" }``
(a folder ``save_pretrained`` wrote).

- ``config.json`` names the architecture; transformers builds it (never remote code).
  ``inspect`` / ``plan`` build it on the meta device and read no weights, so they work
  before the download; ``apply`` loads the safetensors files with transformers' own
  loader (memory-mapped; it maps checkpoint names of older transformers releases onto
  today's), after checking each Hub file's sha256 against the cache's blob name.
- Weights come from safetensors only (a ``pytorch_model.bin`` is a pickle: code, not
  data, from a stranger). The shards an index names must lie in the folder.
- ``id2label`` become the categories (``keep_classes`` by name), and
  ``preprocessor_config.json`` the preprocessing (report, ``model.py``, ONNX metadata,
  ``features`` / ``stream``).
- The model goes through torch.export (:mod:`surgery.importers.torch_export`): layer
  names are module paths (``vit.layers.5.attention.q_proj``, ``classifier``).

transformers, huggingface_hub and safetensors are the ``hf`` extra, imported here only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from surgery.emitters.files import sha256_file
from surgery.errors import ModelFormatError, SpecError
from surgery.importers.pretrained import hub_cache
from surgery.ir import Net
from surgery.untrusted import contained, read_regular

#: what a model needs from the Hub (fetch downloads these only)
HUB_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json"]
_SHARDS = "*.safetensors"
_JSON_LIMIT = 64 << 20  # a config or an index larger than this is not one


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SpecError(
            "Hugging Face sources need transformers",
            fix="pip install 'surgery-nets[hf]' (transformers, huggingface_hub, safetensors)",
        ) from None
    return transformers


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        values = json.loads(read_regular(path, what, _JSON_LIMIT))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{what} {str(path)!r} is not JSON: {error}") from None
    if not isinstance(values, dict):
        raise ModelFormatError(f"{what} {str(path)!r} holds a {type(values).__name__}, not a JSON object")
    return values


# ---------------------------------------------------------------------- where
def _hub_folder(repo: str, revision: str) -> Path:
    """The cache's snapshot folder of ``repo`` at ``revision`` (its config.json must be there)."""
    from huggingface_hub import try_to_load_from_cache

    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo) or ".." in repo:
        raise SpecError(f"{repo!r} is not a Hugging Face model id", fix='write it as "owner/name"', subject=repo)
    found = try_to_load_from_cache(repo, "config.json", cache_dir=str(hub_cache()), revision=revision or None)
    if not isinstance(found, str):
        at = f" at revision {revision!r}" if revision else ""
        raise SpecError(
            f"Hugging Face model {repo}{at} is not in the cache ({hub_cache()})",
            fix="run `surgery fetch SPEC` (downloads its config, preprocessor config and safetensors), or on a "
            f"machine that is online `huggingface-cli download {repo}{f' --revision {revision}' if revision else ''}` "
            "and copy the cache folder here (HF_HUB_CACHE / HF_HOME say where it is read)",
            subject=repo,
        )
    return Path(found).parent


def model_folder(hf: Any, base_dir: Path) -> tuple[Path, str]:
    """The folder an ``hf { }`` source reads, and the model's name for messages and the report."""
    if hf.path and hf.model:
        raise SpecError("source.hf names both a model and a path", fix="keep one of them")
    if hf.path:
        folder = base_dir / hf.path
        if not (folder / "config.json").is_file():
            raise SpecError(
                f"{str(folder)!r} is not a Hugging Face model folder: it has no config.json",
                subject=hf.path,
                fix="point path at the folder model.save_pretrained(...) wrote",
            )
        return folder, folder.name
    if not hf.model:
        raise SpecError("source.hf needs a model or a path", fix='add model: "google/vit-base-patch16-224"')
    return _hub_folder(hf.model, hf.revision), hf.model


def _root(folder: Path) -> Path:
    """The folder a model's files must lie in: a Hub snapshot's files link into the
    repository's blobs, two folders up (``models--owner--name/snapshots/<commit>/``)."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the model in ``folder`` (every shard an index names, each
    inside the folder, or inside its Hub cache repository)."""
    root = _root(folder)
    inside = lambda name: str((folder / name).relative_to(root))  # noqa: E731
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"safetensors index {str(index)!r} has no weight_map")
        shards = sorted(set(map(str, weight_map.values())))
        files = []
        for shard in shards:
            if not (folder / shard).exists():
                raise ModelFormatError(
                    f"safetensors index {str(index)!r} names the shard {shard!r}, which is not in {str(folder)!r}",
                    fix="download the model again (`surgery fetch SPEC` for a Hub model): a shard is missing",
                )
            contained(root, inside(shard), "safetensors shard")
            files.append(folder / shard)
        return files
    single = folder / "model.safetensors"
    if single.exists():
        contained(root, inside("model.safetensors"), "safetensors file")
        return [single]
    pickled = [name for name in ("pytorch_model.bin", "tf_model.h5") if (folder / name).exists()]
    raise ModelFormatError(
        f"{str(folder)!r} has no model.safetensors"
        + (f" (it has {', '.join(pickled)}, which surgery does not read: a pickle runs code)" if pickled else ""),
        fix="save the model with safetensors (model.save_pretrained(folder) does by default), or fetch the Hub "
        "model's safetensors files",
    )


def check_hub_hashes(files: list[Path]) -> dict[str, str]:
    """Each file's sha256, checked against the cache's blob name where the file is a link
    into the Hub cache's blobs (a large file's blob is named by its sha256)."""
    hashes = {}
    for path in files:
        blob = path.resolve().name
        digest = sha256_file(path)[0]
        if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", blob) and blob != digest:
            raise ModelFormatError(
                f"{str(path)!r} is damaged: its sha256 is {digest[:16]}..., the Hugging Face cache's blob name says "
                f"{blob[:16]}...",
                fix="delete it and run `surgery fetch SPEC` again",
            )
        hashes[path.name] = digest
    return hashes


# ------------------------------------------------------------------- model
def _config(folder: Path, name: str) -> Any:
    transformers = _transformers()
    _read_json(folder / "config.json", "config.json")  # data, read within bounds before transformers does
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, OSError) as error:
        raise ModelFormatError(
            f"transformers cannot read {name}'s config.json: {str(error).strip().splitlines()[0]}",
            fix=f"install a transformers release that has this model type (installed: {transformers.__version__})",
        ) from None


def _architecture(config: Any, name: str) -> Any:
    transformers = _transformers()
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        return transformers.AutoModelForImageClassification
    found = getattr(transformers, str(architectures[0]), None)
    # a stranger's config names the class: only a transformers model class is built from it
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)):
        raise ModelFormatError(
            f"{name}'s config.json names the architecture {architectures[0]!r}, which is not a model class of "
            f"transformers {transformers.__version__}",
            fix="install a transformers release that has it; surgery never runs a model's own code",
        )
    return found


def build(folder: Path, name: str, shapes_only: bool) -> tuple[Any, Any]:
    """The model (on the meta device when ``shapes_only``) and its config."""
    from surgery.lazy_torch import torch

    config = _config(folder, name)
    cls = _architecture(config, name)
    if shapes_only:
        with torch.device("meta"):
            return cls._from_config(config), config
    from safetensors import SafetensorError

    weight_files(folder)
    transformers = _transformers()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # apply prints its own progress
    try:
        model = cls.from_pretrained(
            str(folder), config=config, local_files_only=True, trust_remote_code=False, use_kernels=False,
            dtype=torch.float32,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ModelFormatError(
            f"transformers cannot load {name}'s weights: {type(error).__name__}: {str(error).strip().splitlines()[0]}",
            fix="download the model again (`surgery fetch SPEC` for a Hub model)",
        ) from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return model, config


def default_input_shape(config: Any) -> tuple[int, ...]:
    """[1, channels, size, size] from the config's image_size (224 where it has none)."""
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (1, int(getattr(config, "num_channels", 3)), int(height), int(width))


def load_hf_source(hf: Any, input_shape: tuple[int, ...], base_dir: Path, shapes_only: bool) -> Net:
    """The net of an ``hf { }`` source (see the module docstring)."""
    from surgery.importers.torch_fx import import_torch
    from surgery.preprocess import from_hf_processor

    folder, name = model_folder(hf, base_dir)
    model, config = build(folder, name, shapes_only)
    shape = tuple(input_shape) or default_input_shape(config)
    net = import_torch(model, shape, name=name.rsplit("/", 1)[-1], output=hf.output)
    record: dict[str, Any] = {"name": name, "file": str(folder), "cache": "huggingface" if hf.model else "folder"}
    if hf.revision:
        record["revision"] = hf.revision
    if not shapes_only:
        record["sha256"] = check_hub_hashes(weight_files(folder))
    id2label = getattr(config, "id2label", None) or {}
    labels = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
    if labels and all(isinstance(label, str) for label in labels):
        record["categories"] = labels
    processor = folder / "preprocessor_config.json"
    if processor.exists():
        values = _read_json(processor, "preprocessor_config.json")
        record["preprocessing"] = values
        net.preprocess = from_hf_processor(values, name)
    net.pretrained = record
    return net


def fetch(hf: Any, progress: bool = True) -> str:
    """Download a Hub model's config, preprocessor config and safetensors into the cache
    (huggingface_hub checks each file's hash); what was done, in words."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not hf.model:
        return "nothing to fetch: the Hugging Face source is a local folder"
    if not progress:
        disable_progress_bars()
    try:
        folder = snapshot_download(
            hf.model, revision=hf.revision or None, cache_dir=str(hub_cache()),
            allow_patterns=[*HUB_FILES, _SHARDS],
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001  (network and Hub errors, named)
        raise SpecError(
            f"cannot download {hf.model} from the Hugging Face Hub: {type(error).__name__}: {error}",
            fix="check the model id and revision, and that this machine is online",
            subject=hf.model,
        ) from None
    finally:
        if not progress:
            enable_progress_bars()
    files = weight_files(Path(folder))
    check_hub_hashes(files)
    return f"fetched {hf.model}: {folder} ({len(files)} safetensors file{'s' if len(files) > 1 else ''}, hash checked)"


__all__ = ["HUB_FILES", "default_input_shape", "fetch", "load_hf_source", "model_folder", "weight_files"]
