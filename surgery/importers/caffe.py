"""Caffe importer: a ``prototxt`` (+ ``caffemodel``) becomes a :class:`Net`, with
Caffe's own rules (../shared/reference/caffe_facts.md has the sources):

- both the ``layer`` (V2) and legacy ``layers`` (V1) forms, legacy net inputs and blob
  dims, upgraded as Caffe's ``UpgradeNetAsNeeded`` does;
- phases: layers are kept or dropped by include/exclude rules for the chosen phase
  (TRAIN by default); Data layers become the net input;
- in-place layers (``top == bottom``) become ordinary edges: the in-place output gets
  the layer's name as its blob name, and later readers bind to the newest version;
- loss and accuracy layers become training metadata (``net.loss_weights``): a head
  whose loss weight is below the largest (GoogLeNet's 0.3 auxiliary heads) is marked
  train-only, so deploy outputs leave it out;
- weights copy by layer name exactly as ``Net::CopyTrainedLayersFrom``: a source layer
  with no target is ignored, a target with no source gets filler weights, a name match
  whose blob shapes differ is an error telling you to rename or resize that layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from surgery.errors import ModelFormatError, ShapeError, did_you_mean
from surgery.importers.caffe_layer import layer_from_caffe
from surgery.importers.caffemodel import StoredBlob, stored_weights
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.ir.budget import memory_budget
from surgery.layers import layer_type, registered_types
from surgery.layers.new_blobs import init_new_blobs
from surgery.protos import enum_name
from surgery.spec.loader import decode_text
from surgery.spec.schema import caffe_class
from surgery.untrusted import contained, read_regular

DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData"}
LOSS_TYPES = {
    "SoftmaxWithLoss",
    "EuclideanLoss",
    "SigmoidCrossEntropyLoss",
    "HingeLoss",
    "InfogainLoss",
    "MultinomialLogisticLoss",
    "ContrastiveLoss",
}
DROPPED_TYPES = {"Accuracy", "Silence"}

#: V1LayerParameter.LayerType enum names -> V2 type strings (upgrade_proto.cpp).
V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
_V1_PARAMS = (
    "concat_param",
    "convolution_param",
    "data_param",
    "dropout_param",
    "image_data_param",
    "inner_product_param",
    "lrn_param",
    "memory_data_param",
    "pooling_param",
    "power_param",
    "relu_param",
    "softmax_param",
    "slice_param",
    "eltwise_param",
    "transform_param",
    "loss_param",
    "accuracy_param",
)


@dataclass
class CaffeImport:
    """What the weight copy did, for the report (Caffe's CopyTrainedLayersFrom, by name)."""

    copied: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ reading files
def read_prototxt(path: Path) -> Any:
    """A NetParameter from text format; syntax errors carry ``file:line:col``."""
    try:
        raw = read_regular(path, "prototxt", memory_budget())
    except OSError as error:
        raise ModelFormatError(f"cannot read prototxt {str(path)!r}: {error.strerror or error}") from None
    try:
        text = decode_text(raw, str(path), ModelFormatError)
    except ModelFormatError as error:  # a binary file (the caffemodel, named by mistake?) stops here
        raise ModelFormatError(
            f"{error.location}: {error.message}",
            fix="name the network's text definition (.prototxt) here; the trained weights (.caffemodel) are `weights`",
        ) from None
    message = caffe_class("NetParameter")()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        # The place in the prototxt is part of the message; the error's own location is
        # left to whoever named the file (a spec's source line).
        reason = str(error).split(" : ", 1)[-1]
        raise ModelFormatError(f"{path}:{error.GetLine()}:{error.GetColumn()}: {reason}") from None
    return message


def _upgrade_v1(v1: Any) -> Any:
    """A V1LayerParameter as a LayerParameter (upgrade_proto.cpp UpgradeV1LayerParameter)."""
    layer = caffe_class("LayerParameter")()
    layer.name = v1.name
    enum = enum_name(v1, "type")
    layer.type = V1_TYPES.get(enum, enum)
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    layer.loss_weight.extend(v1.loss_weight)
    count = max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param))
    for index in range(count):
        spec = layer.param.add()
        if index < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[index]
        if index < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[index]
        if index < len(v1.param):
            spec.name = v1.param[index]
    for name in _V1_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


def layers_of(net_param: Any, where: str) -> list[Any]:
    """The net's layers in V2 form (V1 upgraded; both at once is Caffe's fatal error)."""
    if net_param.layer and net_param.layers:
        raise ModelFormatError(f"{where} mixes `layer` and legacy `layers`", fix="use one form")
    return list(net_param.layer) if net_param.layer else [_upgrade_v1(v1) for v1 in net_param.layers]


# ---------------------------------------------------------------------- phases
def _rule_matches(rule: Any, phase: int) -> bool:
    # surgery imports with level 0 and no stages, as `caffe train` does by default.
    return (
        (not rule.HasField("phase") or rule.phase == phase)
        and not rule.stage
        and (not rule.HasField("min_level") or rule.min_level <= 0)
        and (not rule.HasField("max_level") or rule.max_level >= 0)
    )


def included(layer: Any, phase: int) -> bool:
    """Caffe's StateMeetsRule logic (net.cpp L261-288)."""
    if layer.include:
        return any(_rule_matches(rule, phase) for rule in layer.include)
    return not any(_rule_matches(rule, phase) for rule in layer.exclude)


# ---------------------------------------------------------------------- import
class _Builder:
    def __init__(self, path: Path, phase: int, input_shape: tuple[int, ...] | None, seed: int) -> None:
        self.path = path
        self.phase = phase
        self.input_shape = input_shape
        self.seed = seed
        self.net = Net()
        self.current: dict[str, str] = {}  # Caffe blob name -> newest IR blob
        self.loss_of: dict[str, float] = {}
        self.pending: list[tuple[Layer, dict, list]] = []

    def add_input(self, name: str, shape: tuple[int, ...]) -> None:
        self.net.add_layer(Layer(name, "Input", outputs=[name], params={"shape": tuple(int(d) for d in shape)}))
        self.current[name] = name

    def data_layer(self, message: Any) -> None:
        shape = self.input_shape or _data_shape(message)
        if shape is None:
            raise ShapeError(
                f"cannot tell the input shape of data layer {message.name!r}",
                fix="give input_shape in the spec's source (e.g. [10, 3, 224, 224])",
            )
        self.add_input(message.top[0], shape)  # the label top only feeds losses and accuracy

    def loss_layer(self, message: Any) -> None:
        weight = message.loss_weight[0] if message.loss_weight else 1.0
        if message.bottom and message.bottom[0] in self.current:
            self.loss_of[self.current[message.bottom[0]]] = round(float(weight), 6)  # float32 in the file

    def layer(self, message: Any) -> None:
        if message.type == "Split":  # Split tops share their bottom's data
            if len(message.bottom) != 1 or message.bottom[0] not in self.current:
                raise ModelFormatError(
                    f"Split layer {message.name!r} has bottoms {list(message.bottom)}: it copies one earlier blob",
                    fix="give the Split layer one bottom that an earlier layer writes",
                )
            for top in message.top:
                self.current[top] = self.current[message.bottom[0]]
            return
        parsed = layer_from_caffe(message)
        layer = parsed.layer
        try:
            layer.inputs = [self.current[b] for b in message.bottom]
        except KeyError as missing:
            raise ModelFormatError(
                f"layer {message.name!r} reads blob {missing.args[0]!r}, which no earlier layer writes",
                location=str(self.path),
            ) from None
        outputs = []
        for top in message.top:
            if top in message.bottom:  # in place: a new version, named after the layer
                blob = layer.name if not self.net.has_blob(layer.name) else f"{top}@{layer.name}"
            elif self.net.has_blob(top):
                raise ModelFormatError(f"top blob {top!r} is produced by multiple layers ({message.name!r})")
            else:
                blob = top
            outputs.append(blob)
        layer.outputs = outputs
        if not layer.outputs:
            layer.outputs = [layer.name]
        if _pooling_clip_differs(layer):
            raise ModelFormatError(
                f"pooling {layer.name!r} uses CEIL rounding without padding and a stride larger "
                "than its kernel, where Caffe and torch count windows differently"
            )
        self.net.add_layer(layer)
        for top, blob in zip(message.top, layer.outputs):
            self.current[top] = blob
        self.pending.append((layer, parsed.fillers, parsed.param_specs))


def _pooling_clip_differs(layer: Layer) -> bool:
    p = layer.params
    if layer.type != "Pooling" or p.get("global_pooling") or not p.get("ceil_mode"):
        return False
    return any(p["pad"][i] == 0 and p["kernel"][i] < p["stride"][i] for i in range(2))


def _data_shape(message: Any) -> tuple[int, ...] | None:
    if message.type == "MemoryData" and message.memory_data_param.height:
        m = message.memory_data_param
        return (m.batch_size, m.channels, m.height, m.width)
    crop = message.transform_param.crop_size
    batch = message.data_param.batch_size or message.image_data_param.batch_size or 1
    if crop:
        channels = 1 if message.transform_param.force_gray else 3
        return (batch, channels, crop, crop)
    return None


def _legacy_inputs(net_param: Any, builder: _Builder) -> None:
    dims = list(net_param.input_dim)
    for index, name in enumerate(net_param.input):
        if builder.input_shape is not None and index == 0:
            shape = builder.input_shape
        elif index < len(net_param.input_shape):
            shape = tuple(net_param.input_shape[index].dim)
        elif len(dims) >= 4 * (index + 1):
            shape = tuple(dims[4 * index : 4 * index + 4])
        else:
            raise ShapeError(f"net input {name!r} has no shape", fix="give input_shape in the spec's source")
        builder.add_input(name, shape)


def _check_types(layers: list[Any], where: str) -> None:
    known = set(registered_types()) | DATA_TYPES | LOSS_TYPES | DROPPED_TYPES | {"Split"}
    unknown = sorted({layer.type for layer in layers if layer.type not in known})
    if unknown:
        hints = [h for h in (did_you_mean(t, registered_types()) for t in unknown) if h]
        raise ModelFormatError(
            f"{where} uses layer types surgery does not support: {', '.join(unknown)}", fix="; ".join(hints) or None
        )


def import_caffe(
    prototxt: str | Path,
    weights: str | Path | None = None,
    *,
    phase: str = "TRAIN",
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Net:
    """Read a Caffe network definition, and its trained weights when given.

    Args:
        prototxt: the ``NetParameter`` in text format (train_val or deploy).
        weights: a ``.caffemodel`` (binary NetParameter, V1 or V2); None = filler weights.
        phase: ``TRAIN`` (default: keeps training-only branches) or ``TEST``.
        input_shape: the net input's shape, overriding what the prototxt says.
        seed: seeds the fillers of layers the caffemodel has no weights for.

    Returns:
        The net; ``net.weight_copy`` lists the copied, filler-initialised and ignored
        layers (the report prints it), and each blob's origin says where it came from.

    Example:
        >>> net = import_caffe("bvlc_googlenet/train_val.prototxt", "bvlc_googlenet.caffemodel")
    """
    path = Path(prototxt)
    net_param = read_prototxt(path)
    phase_number = {"TRAIN": 0, "TEST": 1}[phase.upper()]
    layers = [layer for layer in layers_of(net_param, str(path)) if included(layer, phase_number)]
    _check_types(layers, str(path))
    builder = _Builder(path, phase_number, tuple(input_shape) if input_shape else None, seed)
    builder.net.name = net_param.name or path.stem
    _legacy_inputs(net_param, builder)
    for message in layers:
        if message.type in DATA_TYPES:
            builder.data_layer(message)
        elif message.type in LOSS_TYPES:
            builder.loss_layer(message)
        elif message.type not in DROPPED_TYPES:
            builder.layer(message)
    net = builder.net
    _finish_heads(net, builder.loss_of)
    net.shapes()
    report = CaffeImport()
    source = stored_weights(Path(weights)) if weights else {}
    for layer, fillers, specs in builder.pending:
        _give_blobs(net, layer, fillers, specs, source, report, seed, Path(weights).name if weights else None)
    report.ignored = [name for name in source if name not in net]
    net.weight_copy = {"copied": report.copied, "initialised": report.initialised, "ignored": report.ignored}
    net.shapes()
    net.preprocess = _test_transform(layers_of(net_param, str(path)), path.parent)
    return net


def _test_transform(layers: list[Any], base_dir: Path) -> Any:
    """What the first data layer of the TEST phase (deployment's) says about its input."""
    from surgery.preprocess import from_caffe_transform

    for message in layers:
        if message.type in DATA_TYPES and included(message, 1) and message.HasField("transform_param"):
            return from_caffe_transform(message.transform_param, lambda name: _channel_means(base_dir, name))
    return None


def mean_files(path: Path) -> list[Path]:
    """The mean_file a prototxt's deployment data layer names (inside its folder:
    :func:`import_caffe` refuses others), for the report's list of inputs."""
    for message in layers_of(read_prototxt(path), str(path)):
        if message.type in DATA_TYPES and included(message, 1) and message.transform_param.mean_file:
            return [contained(path.parent, message.transform_param.mean_file, "transform_param's mean_file")]
    return []


def _channel_means(folder: Path, name: str) -> list[float]:
    """A mean_file (a BlobProto of C x H x W) named by the prototxt in ``folder``: its
    per-channel means. Only a regular file inside that folder, of at most the memory
    budget's bytes, is read (:mod:`surgery.untrusted`)."""
    import numpy as np

    path = contained(folder, name, "transform_param's mean_file")
    blob = caffe_class("BlobProto")()
    try:
        blob.ParseFromString(read_regular(path, "mean_file", memory_budget()))
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"cannot read the mean_file {str(path)!r}: {error}") from None
    dims = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
    data = np.asarray(blob.data, np.float64)
    channels = dims[-3] if len(dims) >= 3 else 1
    if data.size == 0 or channels <= 0 or data.size % channels:
        raise ModelFormatError(f"the mean_file {str(path)!r} holds {data.size} values for {channels} channels")
    return [float(v) for v in data.reshape(channels, -1).mean(axis=1)]


def _finish_heads(net: Net, loss_of: dict[str, float]) -> None:
    """Outputs and loss weights; heads with a smaller loss weight are train-only."""
    if not loss_of:
        return
    heads = [blob for blob in net.outputs if blob in loss_of] + [b for b in loss_of if b not in net.outputs]
    net.set_outputs(dict.fromkeys([*heads, *(b for b in net.outputs if b not in loss_of)]))
    net.loss_weights = {blob: loss_of[blob] for blob in heads}
    main = max(loss_of.values())
    auxiliary = {b for b, w in loss_of.items() if w < main}
    if not auxiliary:
        return
    deploy: set[str] = set()
    for blob in net.outputs:
        if blob not in auxiliary:
            producer = net.producer(blob).name
            deploy |= net.ancestors(producer) | {producer}
    for layer in net.layers():
        if layer.name not in deploy:
            layer.phase = "train"


# --------------------------------------------------------------------- weights
def _fits(stored: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a stored blob fits ``shape`` up to Caffe's legacy leading 1s."""
    return stored == shape or ([d for d in stored if d != 1] or [1]) == ([d for d in shape if d != 1] or [1])


def _lazy(stored: StoredBlob, shape: tuple[int, ...], scale: Any = None, **kwargs: Any) -> ParamBlob:
    """A blob read from the caffemodel on first use (times ``scale()`` when given)."""

    def read() -> np.ndarray:
        array = stored.array().reshape(shape)
        return np.ascontiguousarray(array * scale() if scale is not None else array)

    return ParamBlob.from_file(shape, "float32", read, **kwargs)


def _give_blobs(
    net: Net,
    layer: Layer,
    fillers: dict,
    specs: list,
    source: dict,
    report: CaffeImport,
    seed: int,
    weights_name: str | None,
) -> None:
    kind = layer_type(layer.type)
    shapes = net.shapes()
    wanted = kind.param_shapes(layer, [shapes[b] for b in layer.inputs])
    if layer.type == "BatchNorm":
        wanted = {"running_mean": wanted["running_mean"], "running_var": wanted["running_var"]}
    if not wanted:
        return
    if layer.name not in source:
        if layer.type == "BatchNorm":  # Caffe's third blob (the scale factor) is folded away
            specs = specs[: len(wanted)]
        init_new_blobs(net, layer, seed, fillers, specs, allow_zero=True)
        report.initialised.append(layer.name)
        return
    blobs = source[layer.name]
    origin = Origin("source", weights_name or "caffemodel")
    if layer.type == "BatchNorm":
        layer.blobs = _batchnorm_blobs(layer, blobs, wanted, origin)
    else:
        if len(blobs) != len(wanted):
            raise ModelFormatError(
                f"layer {layer.name!r} has {len(wanted)} blobs but the caffemodel's has {len(blobs)}",
                fix=f"rename {layer.name!r} in the spec (classifier rename) so it starts from its filler",
            )
        layer.blobs = {}
        for position, ((role, shape), stored) in enumerate(zip(wanted.items(), blobs)):
            if not _fits(stored.shape, shape):
                raise ModelFormatError(
                    f"cannot copy {role} of layer {layer.name!r}: the caffemodel has shape "
                    f"{stored.shape}, the net needs {shape}",
                    fix=f'rename or resize {layer.name!r} in the spec (classifier {{ layer: "{layer.name}" '
                    "rename: ... }) so it gets fresh weights instead of these",
                )
            lr, decay = specs[position] if position < len(specs) else (1.0, 1.0)
            layer.blobs[role] = _lazy(stored, shape, lr_mult=lr, decay_mult=decay, origin=origin)
    report.copied.append(layer.name)
    net.invalidate()


def _batchnorm_blobs(layer: Layer, blobs: list[StoredBlob], wanted: dict, origin: Origin) -> dict[str, ParamBlob]:
    """Caffe stores running *sums* and a scale factor: mean = sum / factor (§2.6)."""
    if len(blobs) != 3:
        raise ModelFormatError(f"BatchNorm {layer.name!r} needs 3 blobs in the caffemodel, it has {len(blobs)}")

    def scale() -> float:
        factor = float(blobs[2].array().reshape(-1)[0])
        return 0.0 if factor == 0 else 1.0 / factor

    out = {}
    for role, stored in zip(("running_mean", "running_var"), blobs[:2]):
        if not _fits(stored.shape, wanted[role]):
            raise ModelFormatError(f"BatchNorm {layer.name!r} statistics do not fit {wanted[role]}")
        out[role] = _lazy(
            stored,
            wanted[role],
            scale,
            lr_mult=0,
            decay_mult=0,
            trainable=False,
            origin=Origin("source", f"{origin.detail} (divided by the scale factor)"),
        )
    return out


__all__ = ["CaffeImport", "import_caffe", "included", "layers_of", "read_prototxt"]
