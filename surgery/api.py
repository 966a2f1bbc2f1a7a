"""The Python API: what scripts and the CLI both call (the façade: spec files run
through :mod:`surgery.runner`, clip-model helpers live in :mod:`surgery.video`).

Scripted surgery without a spec file::

    import surgery
    from surgery.zoo import DigitsCNN

    net = surgery.load(DigitsCNN(), input_shape=(1, 1, 8, 8))
    surgery.classifier(net, layer=["classifier.fc2"], num_output=2, seed=7)
    surgery.lr(net, up_to="features.pool2", lr_mult=0)
    model = surgery.to_torch(net)                     # a trainable nn.Module
    optimizer = torch.optim.SGD(model.param_groups(lr=0.01), momentum=0.9)

A spec file is the same list of calls: ``surgery.apply("specs/x.prototxt", "out/x")``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

import surgery.layers  # noqa: F401  (registers the layer types)
from surgery.edits import edit
from surgery.errors import ModelFormatError, SpecError, option
from surgery.ir import Net
from surgery.lazy_torch import is_torch_module, nn
from surgery.ops.base import Action
from surgery.report import Report, build_report
from surgery.runner import ApplyResult, Plan, apply, draw, fetch, plan, report_page, verify
from surgery.spec import spec_class
from surgery.untrusted import regular_file
from surgery.video import features, split, stream


# ------------------------------------------------------------------ loading
def load(
    model: Any,
    input_shape: Iterable[int] | None = None,
    *,
    weights: str | Path | None = None,
    name: str | None = None,
    shapes_only: bool = False,
    nhwc_input: bool = False,
) -> Net:
    """Load a network as a :class:`Net`.

    Args:
        model: an ``nn.Module``; a factory reference ``"package.module:callable"`` or
            ``"file.py:callable"``; an ``.onnx`` file; a Caffe ``.prototxt``; or a Keras
            ``.keras`` / ``.h5`` file.
        input_shape: the input's shape, batch axis first (needed for torch models; in
            Keras's order, batch, height, width, channels, for a Keras file).
        weights: a state_dict file (torch factory) or a ``.caffemodel`` (Caffe).
        name: the net's name.
        shapes_only: only names and shapes are needed (a torch factory is then built on
            the meta device: no weights are initialised or read).
        nhwc_input: a Keras file's net keeps Keras's channels-last input (one transpose
            at the input); other formats refuse it.

    Example:
        >>> net = surgery.load("torchvision.models:resnet18", (1, 3, 224, 224))
    """
    shape = tuple(input_shape) if input_shape is not None else ()
    if nhwc_input and (is_torch_module(model) or Path(str(model)).suffix.lower() not in (".keras", ".h5", ".hdf5")):
        raise SpecError("nhwc_input applies to Keras files only", fix="drop nhwc_input=True")
    if is_torch_module(model):
        if not shape:
            raise SpecError("loading a torch module needs input_shape", fix="pass input_shape=(1, 3, 224, 224)")
        from surgery.importers.torch_fx import import_torch  # torch work: imported here

        return import_torch(model, shape, name=name)
    reference = str(model)
    suffix = Path(reference).suffix.lower()
    if Path(reference).is_dir():
        raise ModelFormatError(
            f"{reference!r} is a folder, not a model file",
            fix="name the .onnx / .prototxt file, or a torch factory 'package.module:callable'",
        )
    if os.path.exists(reference):  # a FIFO or a device is named as such, never opened
        regular_file(reference, "model file")
    if suffix not in (".onnx", ".keras", ".h5", ".hdf5") and _is_caffe_text(Path(reference)):
        suffix = ".prototxt"
    if suffix == ".onnx":
        from surgery.importers.onnx_model import import_onnx

        return import_onnx(Path(reference), input_shape=shape or None)
    if suffix in (".prototxt", ".pbtxt"):
        from surgery.importers.caffe import import_caffe

        return import_caffe(Path(reference), Path(weights) if weights else None, input_shape=shape or None)
    if suffix in (".keras", ".h5", ".hdf5"):
        from surgery.importers.keras import import_keras

        return import_keras(Path(reference), input_shape=shape or None, name=name, nhwc_input=nhwc_input)
    from surgery.importers.sources import load_torch_source
    from surgery.importers.trust import trusting_code

    if not shape:
        raise SpecError(
            f"building {reference!r} needs the shape of its input",
            fix=option(
                "give --input-shape N,C,H,W (batch first, at the size the model takes)",
                "pass input_shape=(N, C, H, W) (batch first, at the size the model takes)",
            ),
        )

    with trusting_code():  # the caller names this factory itself: it is theirs to run
        return load_torch_source(reference, "", str(weights or ""), shape, Path.cwd(), name, shapes_only)


def _is_caffe_text(path: Path) -> bool:
    """A Caffe network definition, told by content (any file name)."""
    from surgery.spec.loader import sniff_text

    if not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(1 << 16)
    return b"\0" not in head and sniff_text(head.decode("utf-8", errors="replace"))[0] == "caffe"


# -------------------------------------------------------------------- edits
def _layers(layers: Iterable[dict | str]) -> list[dict]:
    out = []
    for item in layers:
        if isinstance(item, str):  # Caffe syntax: 'name: "fc" type: "InnerProduct" ...'
            message = spec_class("Append")()
            text_format.Parse(f"layer {{ {item} }}", message)
            out.append(json_format.MessageToDict(message.layer[0], preserving_proto_field_name=True))
        else:
            out.append(item)
    return out


def classifier(
    net: Net,
    layer: str | list[str],
    *,
    rename: str | list[str] | None = None,
    num_output: int | None = None,
    weight_filler: dict | None = None,
    bias_filler: dict | None = None,
    propagate: str | None = None,
    keep_classes: list[str | int] | None = None,
    seed: int = 0,
) -> list[Action]:
    """Rename and/or resize classifier layers with fresh filler weights; ``keep_classes``
    (the pretrained weights' category names, or row indices) keeps those rows exactly.

    Example:
        >>> surgery.classifier(net, ["loss1/classifier", "loss2/classifier", "loss3/classifier"],
        ...                    rename=["loss1/flowers", "loss2/flowers", "loss3/flowers"], num_output=102)
    """
    return edit(
        net,
        "classifier",
        seed=seed,
        layer=_list(layer),
        rename=_list(rename),
        num_output=num_output,
        weight_filler=weight_filler,
        bias_filler=bias_filler,
        propagate=propagate,
        keep_classes=[str(entry) for entry in keep_classes] if keep_classes else None,
    )


def lr(
    net: Net,
    *,
    layer: str | list[str] | None = None,
    match: str | list[str] | None = None,
    regex: str | list[str] | None = None,
    up_to: str | None = None,
    lr_mult: float | None = None,
    decay_mult: float | None = None,
    blob: str | None = None,
) -> list[Action]:
    """Set lr_mult / decay_mult (0 = frozen) by name, glob, regex or "up to layer X"."""
    return edit(
        net,
        "lr",
        layer=_list(layer),
        match=_list(match),
        regex=_list(regex),
        up_to=up_to,
        lr_mult=lr_mult,
        decay_mult=decay_mult,
        blob=blob,
    )


def cut(net: Net, at: str) -> list[Action]:
    """Keep the net up to and including layer ``at``."""
    return edit(net, "cut", at=at)


def append(net: Net, layers: Iterable[dict | str], *, seed: int = 0) -> list[Action]:
    """Stack new layers (Caffe syntax, as dicts or prototxt text) on the net's output."""
    return edit(net, "append", seed=seed, layer=_layers(layers))


def insert(
    net: Net, after: str, layers: Iterable[dict | str], *, before: str | None = None, seed: int = 0
) -> list[Action]:
    """Insert new layers between ``after`` and its consumers (or only ``before``)."""
    return edit(net, "insert", seed=seed, after=after, before=before, layer=_layers(layers))


def remove(net: Net, *, layer: str | list[str] | None = None, branch: str | list[str] | None = None) -> list[Action]:
    """Bypass one-in-one-out layers, or delete branches with everything downstream."""
    return edit(net, "remove", layer=_list(layer), branch=_list(branch))


def collapse(
    net: Net,
    first: str,
    second: str,
    name: str,
    *,
    mode: str = "EXACT",
    kernel_size: int | None = None,
    accept_border: bool | None = None,
    calibration: str | None = None,
    samples: int | None = None,
    weight_filler: dict | None = None,
    seed: int = 0,
) -> list[Action]:
    """Two convolutions into one (``mode`` EXACT / FIT / FRESH)."""
    return edit(
        net,
        "collapse",
        seed=seed,
        first=first,
        second=second,
        name=name,
        mode=mode,
        kernel_size=kernel_size,
        accept_border=accept_border,
        calibration=calibration,
        samples=samples,
        weight_filler=weight_filler,
    )


def eltwise(
    net: Net,
    name: str,
    bottom: str | list[str],
    *,
    operation: str = "PROD",
    layers: Iterable[dict | str] = (),
    near_identity: bool | None = None,
    allow_zero: bool | None = None,
    seed: int = 0,
) -> list[Action]:
    """Insert an elementwise PROD / SUM / MAX (broadcasting) of ``bottom[0]`` and a second
    input (``bottom[1]``, or the output of new ``layers``)."""
    return edit(
        net,
        "eltwise",
        seed=seed,
        name=name,
        bottom=_list(bottom),
        operation=operation,
        layer=_layers(layers) or None,
        near_identity=near_identity,
        allow_zero=allow_zero,
    )


def fold_batchnorm(net: Net, layer: str | list[str] | None = None) -> list[Action]:
    """Fold BatchNorm (+ Scale) into the preceding Convolution / InnerProduct."""
    return edit(net, "fold_batchnorm", layer=_list(layer))


def replace(net: Net, layer: str, by: dict | str, *, propagate: str = "REINIT", seed: int = 0) -> list[Action]:
    """Give ``layer`` a new definition (Caffe syntax), keeping weights that still fit."""
    return edit(net, "replace", seed=seed, layer=layer, by=_layers([by])[0], propagate=propagate)


def fc_to_conv(net: Net, layer: str | list[str]) -> list[Action]:
    """InnerProduct layers into equivalent Convolutions (fully convolutional use)."""
    return edit(net, "fc_to_conv", layer=_list(layer))


def sequence(
    net: Net, layers: Iterable[dict | str], *, at: str | None = None, frames: int = 16, seed: int = 0
) -> list[Action]:
    """Make an image net a clip model: input ``(N, T, C, H, W)``, every layer up to ``at``
    run per frame, then a temporal head (Caffe syntax) on the per-frame features ``(N, T, F)``.

    Example:
        >>> surgery.sequence(net, ['name: "lstm" type: "LSTM" recurrent_param { num_output: 64 '
        ...                        'return_sequences: false }',
        ...                        'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }'],
        ...                  at="features.pool2", frames=40)
    """
    return edit(net, "sequence", seed=seed, at=at, frames=frames, layer=_layers(layers))


def _list(value: Any) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------------ outputs
def to_torch(net: Net, copy: bool = True) -> nn.Module:
    """The net as a trainable ``nn.Module`` (see :func:`surgery.emitters.torch_module.emit_torch`).

    The module has ``param_groups(lr, weight_decay)`` for torch.optim; frozen parameters
    have ``requires_grad=False``. ``copy=False`` shares storage with the source weights.
    """
    from surgery.emitters.torch_module import emit_torch

    return emit_torch(net, copy_weights=copy)


def save_torch(net: Net, folder: str | Path) -> Path:
    """Write a standalone folder (``model.py`` + ``weights.pt``) that loads with only torch."""
    from surgery.emitters.torch_module import save_torch_folder

    return save_torch_folder(net, Path(folder))


def report(net: Net, actions: list[Action] | None = None) -> Report:
    """The per-layer report of ``net`` (type, shape, params, origin, lr, trainable)."""
    return build_report(net, actions)


def save_onnx(net: Net, path: str | Path, **options: Any) -> Path:
    """Write the deploy ONNX file (see :func:`surgery.emitters.onnx_model.emit_onnx`)."""
    from surgery.emitters.onnx_model import emit_onnx

    return emit_onnx(net, path, **options)


__all__ = [
    "ApplyResult",
    "Plan",
    "append",
    "apply",
    "classifier",
    "collapse",
    "cut",
    "draw",
    "edit",
    "eltwise",
    "fc_to_conv",
    "features",
    "fetch",
    "fold_batchnorm",
    "insert",
    "load",
    "lr",
    "plan",
    "remove",
    "replace",
    "report",
    "report_page",
    "save_onnx",
    "save_torch",
    "sequence",
    "split",
    "stream",
    "to_torch",
    "verify",
]
