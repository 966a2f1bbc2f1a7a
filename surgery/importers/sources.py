"""From a spec's ``source { }`` block (or a CLI argument) to a :class:`Net`.

Weights are never read here: a torch factory is built on the meta device and its
state_dict memory-mapped, so ``inspect`` and ``plan`` cost the same on any model size
and ``apply`` reads each untouched weight once, when it writes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgery.errors import ModelFormatError, SpecError, SurgeryNote
from surgery.importers.pretrained import Pretrained, check_hash, require_file, resolve, split_pretrained
from surgery.importers.pretrained_timm import is_timm, preprocess_of, resolve_timm
from surgery.importers.trust import check_factory
from surgery.ir import Net
from surgery.lazy_torch import nn, torch
from surgery.math.seeding import seeded
from surgery.untrusted import regular_file


def resolve_factory(reference: str, base_dir: Path) -> Callable[..., nn.Module]:
    """``"package.module:callable"`` or ``"path/to/file.py:callable"`` to the callable;
    ``"timm:NAME"`` is ``timm.create_model("NAME", ...)``."""
    module_ref, sep, attr = reference.rpartition(":")
    if module_ref == "timm" and attr:
        return _timm_builder(attr, reference)
    if not sep or not module_ref or not attr:
        raise SpecError(
            f"factory {reference!r} is not of the form 'module:callable'",
            fix='write e.g. factory: "torchvision.models:resnet18" or "models/net.py:build"',
            subject=reference,
        )
    check_factory(reference, module_ref, base_dir)
    if module_ref.endswith(".py"):
        path = (base_dir / module_ref).resolve()
        if not path.exists():
            raise SpecError(f"factory file {str(path)!r} does not exist", subject=reference)
        if not path.is_file() or path.suffix != ".py":
            raise SpecError(f"factory file {str(path)!r} is not a Python file", subject=reference)
        name = f"surgery_factory_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SpecError(f"factory file {str(path)!r} cannot be imported", subject=reference)
        loader = spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _run_user_code(lambda: loader.exec_module(module), f"importing {module_ref!r}", reference)
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as error:
            raise SpecError(
                f"cannot import {module_ref!r}: {error}", subject=reference, fix="install the package that provides it"
            ) from None
        except (TypeError, ValueError) as error:  # a relative or empty module name
            raise SpecError(
                f"{module_ref!r} is not a module name: {error}",
                subject=reference,
                fix='write e.g. factory: "torchvision.models:resnet18"',
            ) from None
        except Exception as error:  # noqa: BLE001  (the module's own code failed: say so, with its words)
            raise _user_code_error(error, f"importing {module_ref!r}", reference) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        from surgery.errors import did_you_mean

        raise SpecError(
            f"{module_ref!r} has no attribute {attr!r}",
            fix=did_you_mean(attr, [n for n in dir(module) if not n.startswith("_")]),
            subject=reference,
        ) from None


def _timm_builder(name: str, reference: str) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError:
        raise SpecError("a timm factory needs timm", fix="pip install timm", subject=reference) from None
    if not timm.is_model(name):
        from surgery.errors import did_you_mean

        raise SpecError(
            f"timm has no model {name!r}", fix=did_you_mean(name, timm.list_models()), subject=reference
        ) from None

    def build(**kwargs: Any) -> nn.Module:
        return timm.create_model(name, **kwargs)

    build.__qualname__ = f"timm.create_model({name!r})"
    return build


def _user_code_error(error: BaseException, what: str, reference: str) -> SpecError:
    """A factory module or callable failed: the error is in the user's code, named here
    with its file and line (no traceback of surgery's own frames)."""
    where = ""
    if isinstance(error, SyntaxError):
        where = f" ({error.filename}:{error.lineno}:{error.offset or 0})"
    else:
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return SpecError(
        f"{what} raised {type(error).__name__}: {error}{where}",
        subject=reference,
        fix="fix the factory's code, or point the spec at another factory",
    )


def _run_user_code(run: Callable[[], Any], what: str, reference: str) -> Any:
    """Run code the spec names (a factory module or callable): its exceptions are the
    spec's problem, reported as one error."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001  (any exception of user code is a user error)
        raise _user_code_error(error, what, reference) from None


def _kwargs(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(
            f"kwargs is not valid JSON: {error.msg}", fix="write e.g. kwargs: '{\"num_classes\": 10}'", subject=text
        ) from None
    if not isinstance(value, dict):
        raise SpecError("kwargs must be a JSON object", subject=text)
    return value


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict file, memory-mapped (no weight is read until used)."""
    try:
        regular_file(path, "weights file", SpecError)  # a FIFO or a folder is named as such, never opened
    except SpecError as error:
        error.subject = str(path)
        raise
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many types for a corrupt file)
        raise ModelFormatError(f"cannot read weights file {str(path)!r}: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFormatError(
            f"{str(path)!r} is not a state_dict (a dict of tensors)",
            fix="save it with torch.save(model.state_dict(), path)",
        )
    return state


def torch_pretrained(
    factory: str, kwargs: str, pretrained: str, weights: str, base_dir: Path
) -> tuple[Callable[..., Any], dict[str, Any], Pretrained | None]:
    """The factory, its arguments (without a ``weights`` name) and the pretrained
    weights a torch source names, resolved to torch's cache (None when it names none)."""
    arguments = _kwargs(kwargs)
    factory, arguments = timm_create_model(factory, arguments)
    build = resolve_factory(factory, base_dir)
    if is_timm(factory):
        return build, *_timm_pretrained(factory, arguments, pretrained, weights)
    if arguments.get("pretrained") is True:
        raise SpecError(
            "kwargs pretrained: true asks the factory to download and load its weights, which surgery "
            "does not let it do",
            fix='use a torchvision builder with pretrained: NAME, a timm model (factory: "timm:resnet50") '
            "with pretrained: TAG, or save the state_dict once and name the file as weights:",
            subject=factory,
        )
    name, arguments = split_pretrained(pretrained, arguments)
    if not name:
        return build, arguments, None
    if weights:
        raise SpecError(
            f"the source names both a weights file ({weights!r}) and pretrained weights ({name!r})",
            fix="keep one of them",
            subject=weights,
        )
    return build, arguments, resolve(build, name, factory)


def timm_create_model(factory: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """timm's own documented call, ``factory: "timm:create_model"`` with ``kwargs:
    '{"model_name": "vit_tiny_patch16_224"}'``, as the short form ``"timm:vit_tiny_patch16_224"``
    (the same model, the same pretrained tags)."""
    if factory != "timm:create_model":
        return factory, arguments
    rest = dict(arguments)
    name = rest.pop("model_name", None)
    if not isinstance(name, str) or not name:
        raise SpecError(
            'factory "timm:create_model" needs the model\'s name in kwargs',
            fix='write kwargs: \'{"model_name": "resnet50"}\', or the short form factory: "timm:resnet50"',
            subject=factory,
        )
    return f"timm:{name}", rest


def _timm_pretrained(
    factory: str, arguments: dict[str, Any], pretrained: str, weights: str
) -> tuple[dict[str, Any], Pretrained | None]:
    """A timm model's arguments without ``pretrained`` (timm never downloads here), and
    the weights its tag (or ``pretrained: true``) names."""
    asked = arguments.pop("pretrained", False)
    if asked not in (True, False):
        raise SpecError(f"kwargs pretrained must be true or false, not {asked!r}", subject=factory)
    tag = pretrained or ("true" if asked else "")
    if not tag:
        return arguments, None
    if weights:
        raise SpecError(
            f"the source names both a weights file ({weights!r}) and pretrained weights ({tag!r})",
            fix="keep one of them",
            subject=weights,
        )
    return arguments, resolve_timm(factory, tag)


def load_torch_source(
    factory: str,
    kwargs: str,
    weights: str,
    input_shape: tuple[int, ...],
    base_dir: Path,
    name: str | None = None,
    shapes_only: bool = False,
    seed: int = 0,
    pretrained: str = "",
    output: str = "",
) -> Net:
    """Build the model (on the meta device when weights come from a file or torch's
    cache, or when only shapes are wanted) and trace it. The factory runs with torch's,
    numpy's and Python's generators seeded from ``seed`` (and restored after), so a
    factory's own random initialisation gives the same weights on every run. Pretrained
    weights must be in the cache (else a located error says where to put them); only
    ``apply`` (not ``shapes_only``) reads them, after checking their hash."""
    from surgery.importers.torch_fx import import_torch  # torch work: imported here

    build, arguments, cached = torch_pretrained(factory, kwargs, pretrained, weights, base_dir)
    if not input_shape:
        raise SpecError(
            "a torch source needs input_shape (batch axis first)",
            fix="add input_shape: [N, C, H, W] to the source, at the size the model takes (e.g. [1, 3, 224, 224])",
        )
    sha256 = None
    if cached is not None and shapes_only and not cached.path.is_file():
        # inspect / plan / draw read no weights: they work before the download, and say so
        try:
            require_file(cached)
        except SpecError as missing:
            warnings.warn(f"{missing.message}; shapes only here, apply needs them ({missing.fix})", SurgeryNote, 2)
    elif cached is not None:
        require_file(cached)
        if not shapes_only:
            sha256 = check_hash(cached)
    state = load_state_dict(base_dir / weights) if weights else None
    if cached is not None and not shapes_only:
        state = load_state_dict(cached.path)
        weights = str(cached.path)
    # On the meta device when weights come from a file, or only shapes are wanted
    # (inspect / plan): the factory's own init would cost time and memory.
    meta = state is not None or shapes_only
    with seeded(seed):
        model = _run_user_code(lambda: _build(build, arguments, meta), f"calling {factory!r}", factory)
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"{factory!r} returned a {type(model).__name__}, not an nn.Module",
            subject=factory,
            fix="the factory must return the model (an nn.Module instance)",
        )
    if state is not None:
        _check_keys(model, state, weights)
        net = import_torch(model, input_shape, state_dict=state, name=name, output=output)
    else:
        net = import_torch(model, input_shape, name=name, output=output)
    if cached is not None:
        from surgery.preprocess import from_torchvision

        net.pretrained = cached.record(sha256)
        if is_timm(factory):
            net.preprocess = preprocess_of(cached)
        else:
            net.preprocess = from_torchvision(cached.preprocessing, cached.name)
    return net


def _build(build: Callable[..., Any], arguments: dict[str, Any], meta: bool) -> Any:
    if not meta:
        return build(**arguments)
    try:
        with torch.device("meta"):
            return build(**arguments)
    except (NotImplementedError, RuntimeError) as error:
        if "meta" not in str(error):
            raise
    # The constructor reads tensor values (RegNet's .tolist()): build it for real, then
    # drop its tensors to the meta device, so weights still come from the file only.
    warnings.warn(
        f"{getattr(build, '__qualname__', build)} reads tensor values while it is built, so it "
        "cannot be built on the meta device; built on the CPU instead (slower, same result)",
        SurgeryNote,
        stacklevel=2,
    )
    model = build(**arguments)
    return model.to("meta") if isinstance(model, nn.Module) else model


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], weights: str) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise ModelFormatError(
            f"weights file {weights!r} does not match the model: {'; '.join(parts)}",
            fix="pass the state_dict saved from the same architecture (and factory kwargs)",
        )


def load_source(source: Any, base_dir: Path, name: str | None = None, shapes_only: bool = False, seed: int = 0) -> Net:
    """The net a spec's ``source { }`` names (paths relative to ``base_dir``), with its
    input preprocessing: what the source says, under what the spec's ``preprocess { }``
    says (see :mod:`surgery.preprocess`).

    ``shapes_only``: the net is for shapes and names only (``inspect``, ``plan``);
    blobs may then have no readable data. ``seed`` (the spec's): seeds a torch
    factory's own initialisation and the fillers of Caffe layers without weights."""
    net = _load_net(source, base_dir, name, shapes_only, seed)
    net.preprocess = resolve_preprocess(net, source.preprocess if source.HasField("preprocess") else None)
    return net


def resolve_preprocess(net: Net, message: Any) -> Any:
    """The net's preprocessing: the spec's block over the source's, else the source's,
    else the default for an image input (pixels to [0, 1]); None for other inputs."""
    from surgery import preprocess

    inputs = net.input_layers()
    shape = tuple(inputs[0].params["shape"]) if len(inputs) == 1 else ()
    image = len(shape) == 4 and shape[1] in (1, 3)
    if message is None and not image:
        return net.preprocess
    if not image:
        raise SpecError(
            f"preprocess describes an image input (N, C, H, W) with 1 or 3 channels; the net's input is {list(shape)}",
            fix="remove the preprocess block",
        )
    source = net.preprocess.fitted_to(tuple(shape[2:])) if net.preprocess is not None else None
    if message is not None:
        result = preprocess.stated(message, source, shape[1])
    else:
        result = source or preprocess.default(shape[1])
    result.check_net_input(shape)
    return result


def _load_net(source: Any, base_dir: Path, name: str | None, shapes_only: bool, seed: int) -> Net:
    fmt = source.WhichOneof("format")
    shape = tuple(source.input_shape)
    if fmt == "torch":
        t = source.torch
        if not t.factory:
            raise SpecError("source.torch needs a factory", fix='add factory: "torchvision.models:resnet18"')
        return load_torch_source(
            t.factory, t.kwargs, t.weights, shape, base_dir, name, shapes_only, seed, pretrained=t.pretrained,
            output=t.output,
        )  # fmt: skip
    if fmt == "hf":
        from surgery.importers.hf import load_hf_source

        return load_hf_source(source.hf, shape, base_dir, shapes_only)
    if fmt == "onnx":
        try:
            from surgery.importers.onnx_model import import_onnx
        except ImportError as error:
            raise SpecError(f"ONNX sources need the ONNX importer: {error}") from None
        return import_onnx(base_dir / source.onnx.path, input_shape=shape or None)
    if fmt == "caffe":
        try:
            from surgery.importers.caffe import import_caffe
        except ImportError as error:
            raise SpecError(f"Caffe sources need the Caffe importer: {error}") from None
        c = source.caffe
        phase = "TRAIN" if c.phase == 0 else "TEST"
        return import_caffe(
            base_dir / c.prototxt,
            base_dir / c.weights if c.weights else None,
            phase=phase,
            input_shape=shape or None,
            seed=seed,
        )
    if fmt == "keras":
        from surgery.importers.keras import import_keras

        if not source.keras.path:
            raise SpecError("source.keras needs a path", fix='add path: "model.keras"')
        path = base_dir / source.keras.path
        if not path.exists():
            raise SpecError(
                f"Keras file {str(path)!r} does not exist",
                subject=source.keras.path,
                fix="check the path (relative to the spec file); Keras writes such a file with "
                "model.save('model.keras')",
            )
        return import_keras(path, input_shape=shape or None, name=name, nhwc_input=source.keras.nhwc_input)
    raise SpecError(
        "the spec names no source model", fix="add source { torch { factory: ... } } (or hf / onnx / caffe / keras)"
    )
