"""ONNX importer: an ONNX model's nodes and initializers become a :class:`Net`.

Each node is mapped through the layer registry (``onnx_ops`` + ``from_onnx`` in each
layer type's file). Layer names come from node names (generated and unique when
empty); blob names are the ONNX value names. Initializers become lazy blobs that are
read from the file only when an output needs them.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from surgery.errors import ModelFormatError, ShapeError
from surgery.importers import wire
from surgery.importers.onnx_fold import constant_nodes, fold
from surgery.importers.onnx_fusions import drop_nan_guards, drop_zero_masks, fuse_gelu
from surgery.importers.onnx_proto import attribute_value, messages, np_dtype, to_array
from surgery.interrupts import checkpoint
from surgery.ir import Layer, Net, ParamBlob, Shape
from surgery.layers import layer_type, registered_types
from surgery.untrusted import contained, regular_file

if TYPE_CHECKING:
    import onnx

_PASS_THROUGH = {"Identity"}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _field_number(message: str, field: str) -> int:
    return int(getattr(messages(), message).DESCRIPTOR.fields_by_name[field].number)


class Weights:
    """Where each initializer's values are, read only when asked for: ``raw_data`` in the
    memory-mapped model file, an external data file beside it (also mapped), or the
    tensor's typed fields (small tensors written by old exporters)."""

    def __init__(self, path: Path, buffer: Any, raw: dict[str, tuple[int, int]]) -> None:
        self.folder = path.resolve().parent
        self.buffer = buffer
        self.raw = raw
        self._external: dict[str, Any] = {}

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """An initializer's values (a view into the mapped file when aligned)."""
        dtype = np_dtype(tensor.data_type)
        dims = tuple(int(d) for d in tensor.dims)
        if tensor.name in self.raw and dtype.kind in "fiub":
            offset, length = self.raw[tensor.name]
            return self._view(self.buffer, dtype, offset, length, dims, "the model file")
        if tensor.name in self.raw:  # strings and other exotic types: let onnx decode them
            full = messages().TensorProto()
            full.CopyFrom(tensor)
            offset, length = self.raw[tensor.name]
            full.raw_data = bytes(self.buffer[offset : offset + length])
            return to_array(full)
        return self.stored(tensor)

    def stored(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The values of a tensor held in its message or in an external file (a Constant's
        value; an initializer whose raw_data is not in the mapped model file)."""
        if tensor.data_location == messages().TensorProto.EXTERNAL:
            dtype = np_dtype(tensor.data_type)
            dims = tuple(int(d) for d in tensor.dims)
            location, offset, length = external_entry(tensor, self.folder)
            if length is None:
                length = math.prod(dims) * dtype.itemsize
            return self._view(self._mapped(location), dtype, offset, length, dims, location)
        _check_inline(tensor)
        return to_array(tensor)

    def _mapped(self, location: str) -> Any:
        if location not in self._external:
            self._external[location] = wire.open_mapped(contained(self.folder, location, "external data"))
        return self._external[location]

    @staticmethod
    def _view(buffer: Any, dtype: np.dtype, offset: int, length: int, dims: tuple[int, ...], where: str) -> np.ndarray:
        count = int(np.prod(dims))
        if length != count * dtype.itemsize or offset + length > len(buffer):
            raise ModelFormatError(
                f"{where} holds {max(0, min(length, len(buffer) - offset))} bytes for a tensor of "
                f"{count * dtype.itemsize} (shape {list(dims)}, {dtype}): truncated or corrupt",
                fix="re-export the model, or copy the file again",
            )
        return wire.view(buffer, dtype, offset, count).reshape(dims)


def _skim(buffer: Any, size: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, int]]]:
    """The model with its initializers' ``raw_data`` left in the file: protobuf parses
    the rest; each raw_data's (offset, length) is returned by initializer name."""
    graph_field = _field_number("ModelProto", "graph")
    initializer_field = _field_number("GraphProto", "initializer")
    raw_data_field = _field_number("TensorProto", "raw_data")
    head, graphs = wire.split(buffer, 0, size, {graph_field})
    model = messages().ModelProto.FromString(head)
    raw: dict[str, tuple[int, int]] = {}
    for graph in graphs:  # a message field written twice merges, as protobuf does
        graph_head, initializers = wire.split(buffer, graph.value_start, graph.end, {initializer_field})
        model.graph.MergeFromString(graph_head)
        for item in initializers:
            tensor_head, data = wire.split(buffer, item.value_start, item.end, {raw_data_field})
            tensor = model.graph.initializer.add()
            tensor.MergeFromString(tensor_head)
            if data:
                raw[tensor.name] = (data[-1].value_start, data[-1].end - data[-1].value_start)
    return model, raw


def _load(path: Path) -> tuple[onnx.ModelProto, Weights]:
    """The model's structure (no weight read) and where its weights are."""
    regular_file(path, "ONNX file")
    try:
        buffer = wire.open_mapped(path)
        model, raw = _skim(buffer, path.stat().st_size)
    except ModelFormatError:
        raise
    except Exception as error:  # noqa: BLE001  (wire.WireError, protobuf's DecodeError and friends)
        raise ModelFormatError(
            f"{str(path)!r} is not a readable ONNX file ({type(error).__name__}: {error})",
            fix="check the file is complete (re-export or re-download it)",
        ) from None
    if not model.graph.node:
        raise ModelFormatError(f"{str(path)!r} has no graph nodes (truncated or not an ONNX model)")
    _check_names(model, path)
    _check_versions(model, path)
    _check_single_writers(model, path)
    _check_initializers(model, raw, path)
    _check_external_data(model, path)
    return model, Weights(path, buffer, raw)


_CORRUPT = "the file is corrupt: re-export the model, or copy the file again"


def _check_names(model: onnx.ModelProto, path: Path) -> None:
    """Every name is text (protobuf hands back bytes for a string field that is not
    UTF-8: a flipped bit in a name)."""
    graph = model.graph
    names = [
        graph.name,
        *(v.name for v in (*graph.input, *graph.output, *graph.value_info)),
        *(t.name for t in graph.initializer),
    ]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output, *(a.name for a in node.attribute)]
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise ModelFormatError(f"{str(path)!r} has a name that is not UTF-8 text ({bytes(bad)[:40]!r})", fix=_CORRUPT)


#: The highest opset every supported onnx release (>= 1.16) defines: a file at or below it
#: is checked without importing onnx, which costs more than inspect may take.
_OPSET_ALL_RELEASES_KNOW = 21


def _check_versions(model: onnx.ModelProto, path: Path) -> None:
    """The file's IR version and default-domain opset are ones the installed onnx knows:
    a newer file may mean something else by the same operator names."""
    known_ir = max(messages().Version.values())
    if model.ir_version > known_ir or model.ir_version < 3:
        raise ModelFormatError(
            f"{str(path)!r} has ONNX IR version {model.ir_version}; the installed onnx reads 3 to {known_ir}",
            fix="export the model with an older exporter setting, or upgrade onnx",
        )
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > _OPSET_ALL_RELEASES_KNOW:
            from onnx.defs import onnx_opset_version

            if entry.version > onnx_opset_version():
                raise ModelFormatError(
                    f"{str(path)!r} uses ONNX opset {entry.version}; the installed onnx knows opsets up to "
                    f"{onnx_opset_version()}",
                    fix="export the model at a lower opset, or upgrade onnx",
                )


def _check_single_writers(model: onnx.ModelProto, path: Path) -> None:
    """Each value has one writer: a graph input, an initializer or one node's output (two
    nodes writing one name would leave one of them unused, silently)."""
    written = {value.name for value in model.graph.input} | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            if name in written:
                raise ModelFormatError(
                    f"ONNX node {node_name(node)!r} ({node.op_type}) writes {name!r}, which another node, input or "
                    "initializer of the graph writes too",
                    fix="each value has one writer in a valid ONNX graph (onnx.checker says so): the file is corrupt",
                )
            written.add(name)


def _check_initializers(model: onnx.ModelProto, raw: dict[str, tuple[int, int]], path: Path) -> None:
    """Each initializer's type is a number type and its stored size fits its dims:
    checked against the header before anything is mapped or read."""
    for tensor in model.graph.initializer:
        try:
            dtype = np_dtype(tensor.data_type)
        except (KeyError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "fiubc":
            raise ModelFormatError(
                f"initializer {tensor.name!r} in {str(path)!r} has data type {tensor.data_type} "
                "(surgery reads number tensors)",
                fix=_CORRUPT,
            )
        dims = [int(d) for d in tensor.dims]
        if any(d < 0 for d in dims):
            raise ModelFormatError(
                f"initializer {tensor.name!r} in {str(path)!r} has negative dims {dims}", fix=_CORRUPT
            )
        if tensor.name not in raw and tensor.data_location != messages().TensorProto.EXTERNAL:
            _check_inline(tensor)
        if tensor.name in raw:
            count = int(np.prod(dims, dtype=object)) if dims else 1
            length = raw[tensor.name][1]
            if length != count * dtype.itemsize:
                raise ModelFormatError(
                    f"initializer {tensor.name!r} in {str(path)!r} stores {length} bytes for "
                    f"shape {dims} of {dtype} ({count * dtype.itemsize} bytes)",
                    fix=_CORRUPT,
                )


def _external_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor of the file whose values are in an external file: initializers, and
    tensor attributes (a Constant's ``value``, ConstantOfShape's) of every node, with
    what holds it for messages."""
    external = messages().TensorProto.EXTERNAL
    for tensor in model.graph.initializer:
        if tensor.data_location == external:
            yield f"initializer {tensor.name!r}", tensor
    for node in model.graph.node:
        for attribute in node.attribute:
            for tensor in (attribute.t, *attribute.tensors):
                if tensor.data_location == external:
                    yield f"{node.op_type} node {node_name(node)!r}", tensor


def external_entry(tensor: onnx.TensorProto, folder: Path, what: str | None = None) -> tuple[str, int, int | None]:
    """An external tensor's (location, offset, length), each checked: the location a
    regular file inside ``folder`` (:func:`surgery.untrusted.contained`), the offset and
    length non-negative whole numbers. Length None: the tensor's size."""
    what = what or f"tensor {tensor.name!r}"
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in info:
            raise ModelFormatError(f"{what} gives its external data {entry.key!r} twice", fix=_CORRUPT)
        info[entry.key] = entry.value
    location = info.get("location", "")
    contained(folder, location, f"{what}'s external data")
    numbers: list[int | None] = []
    for key in ("offset", "length"):
        text = info.get(key)
        if text is not None and not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise ModelFormatError(
                f"{what} has external data {key} {text[:40]!r}, not a non-negative whole number", fix=_CORRUPT
            )
        numbers.append(None if text is None else int(text))
    return location, numbers[0] or 0, numbers[1]


def external_data_files(path: str | Path) -> list[Path]:
    """The external data files an ONNX file's tensors point to (all inside its folder:
    :func:`import_onnx` refuses others). Reads the structure, not the weights."""
    model, _ = _load(Path(path))
    folder = Path(path).resolve().parent
    locations = {external_entry(tensor, folder, what)[0] for what, tensor in _external_tensors(model)}
    return [(folder / location).resolve() for location in sorted(locations)]


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external reference names a regular file inside the model's folder, with
    offsets and lengths that are numbers: checked before any weight is read."""
    folder = path.resolve().parent
    for what, tensor in _external_tensors(model):
        external_entry(tensor, folder, what)


def _check_inline(tensor: onnx.TensorProto) -> None:
    """A tensor stored in the message holds as many values as its dims say (a typed
    field shorter than the dims is a corrupt file, not a reshape error later)."""
    dtype = np_dtype(tensor.data_type) if tensor.data_type else None
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise ModelFormatError(f"tensor {tensor.name!r} has negative dims {dims}", fix=_CORRUPT)
    count = math.prod(dims)
    if tensor.HasField("raw_data"):
        stored, wanted = len(tensor.raw_data), count * (dtype.itemsize if dtype is not None else 0)
    else:
        fields = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
        stored = sum(len(getattr(tensor, field)) for field in fields)
        wanted = count * (2 if dtype is not None and dtype.kind == "c" else 1)
    if dtype is not None and dtype.kind != "O" and stored != wanted:
        raise ModelFormatError(
            f"tensor {tensor.name!r} stores {stored} values or bytes for shape {dims} ({wanted} expected)",
            fix=_CORRUPT,
        )


class OnnxReader:
    """What a layer type's ``from_onnx`` hook reads from and adds to."""

    def __init__(self, model: onnx.ModelProto, weights: Weights, net: Net) -> None:
        self.model = model
        self.weights = weights
        self.net = net
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.constants: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}
        self.shapes: dict[str, Shape] = {}
        self.batch = 1
        #: the batch the file's input declares (None: symbolic); an exporter bakes it
        #: into Reshape targets, which then follow the batch the net is built at
        self.file_batch: int | None = None
        self._names: collections.Counter = collections.Counter()

    # ----------------------------------------------------------- values
    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: attribute_value(a) for a in node.attribute}

    def const(self, name: str | None) -> np.ndarray | None:
        """The value of an initializer or Constant output, else None."""
        if not name:
            return None
        name = self.alias.get(name, name)
        if name in self.constants:
            return self.constants[name]
        tensor = self.initializers.get(name)
        # Not cached: a weight read here (for a transpose) must not outlive its blob.
        return None if tensor is None else self.weights.array(tensor)

    def const_shape(self, name: str | None) -> tuple[int, ...] | None:
        """The shape of an initializer or Constant output (its values are not read), else None."""
        if not name:
            return None
        name = self.alias.get(name, name)
        if name in self.constants:
            return tuple(self.constants[name].shape)
        tensor = self.initializers.get(name)
        return None if tensor is None else tuple(int(d) for d in tensor.dims)

    def const_list(self, name: str | None) -> list | None:
        value = self.const(name)
        return None if value is None else value.reshape(-1).tolist()

    def blob(self, name: str) -> str:
        """The IR blob for an ONNX value (Identity nodes looked through)."""
        name = self.alias.get(name, name)
        if not self.net.has_blob(name):
            if self.const(name) is not None:
                raise ModelFormatError(f"constant {name!r} is used where a computed tensor is expected")
            raise ModelFormatError(f"value {name!r} is read before any node writes it (the graph is not sorted)")
        return name

    def blob_or_const(self, name: str, node: onnx.NodeProto) -> str:
        """A blob; a constant operand becomes a Constant layer first."""
        value = self.const(name)
        if value is not None and not self.net.has_blob(name):
            return self.constant_layer(node, value, name)
        return self.blob(name)

    def shape(self, blob: str) -> Shape:
        return self.shapes[blob]

    def param(self, name: str, trainable: bool = True) -> ParamBlob:
        """A lazy blob for initializer ``name`` (read from the file on first use)."""
        name = self.alias.get(name, name)
        tensor = self.initializers.get(name)
        if tensor is None or name in self.constants:
            value = np.array(self.const(name))
            if value.dtype.kind not in "fiubc":
                raise ModelFormatError(
                    f"constant {name!r} holds {value.dtype} values where a layer needs numbers", fix=_CORRUPT
                )
            return ParamBlob.from_file(value.shape, value.dtype, lambda: value, trainable=trainable)
        return ParamBlob.from_file(
            tuple(int(d) for d in tensor.dims),
            self._dtype(name),
            functools.partial(self.weights.array, tensor),
            trainable=trainable,
        )

    def param_derived(self, name: str, shape: tuple[int, ...], compute: Any, trainable: bool = True) -> ParamBlob:
        """A lazy blob of ``shape`` holding ``compute(values of initializer name)`` (a
        transpose, a scale), computed only when its data is first used."""
        return ParamBlob.from_file(
            tuple(shape),
            self._dtype(name),
            lambda: np.ascontiguousarray(compute(self.const(name))),
            trainable=trainable,
        )

    def _dtype(self, name: str) -> np.dtype:
        name = self.alias.get(name, name)
        tensor = self.initializers.get(name)
        return self.constants[name].dtype if tensor is None else np_dtype(tensor.data_type)

    # ----------------------------------------------------------- layers
    def unique(self, name: str) -> str:
        candidate = name
        while candidate in self.net:
            self._names[name] += 1
            candidate = f"{name}_{self._names[name]}"
        return candidate

    def layer(
        self,
        node: onnx.NodeProto,
        type_name: str,
        params: dict[str, Any],
        *,
        inputs: list[str] | None = None,
        blobs: dict[str, ParamBlob] | None = None,
        outputs: list[str] | None = None,
    ) -> Layer:
        """Add the layer a node becomes (default inputs: the node's first input)."""
        name = self.unique(node_name(node))
        layer = Layer(
            name,
            type_name,
            inputs=inputs if inputs is not None else [self.blob(node.input[0])],
            outputs=list(outputs if outputs is not None else node.output[:1]),
            params=params,
            blobs=blobs or {},
        )
        return self.add(layer)

    def add(self, layer: Layer) -> Layer:
        self.net.add_layer(layer)
        kind = layer_type(layer.type)
        out = kind.infer_shapes(layer, [self.shapes[b] for b in layer.inputs])
        for blob, shape in zip(layer.outputs, out):
            if shape is None:  # every blob of an ONNX graph is a tensor; its shape must be known
                raise ModelFormatError(f"node {layer.name!r} ({layer.type}): the shape of {blob!r} cannot be known")
            self.shapes[blob] = shape
        return layer

    def constant_layer(self, node: onnx.NodeProto, value: np.ndarray, suffix: str) -> str:
        name = self.unique(f"{node_name(node)}/{suffix}")
        array = np.array(value, dtype=np.float32)
        blob = ParamBlob.from_file(array.shape, array.dtype, lambda: array, trainable=False)
        layer = Layer(name, "Constant", outputs=[name], blobs={"value": blob})
        self.add(layer)
        return name

    def pads(self, node: onnx.NodeProto, source: str, kernel: tuple, stride: tuple, dilation: tuple) -> list[int]:
        """The begins, then the ends, of every spatial axis (``[top, left, bottom, right]``
        in 2-D) from ``pads`` or ``auto_pad``."""
        rank = len(kernel)
        attrs = self.attrs(node)
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * rank)
            for i, size in enumerate(self.shape(source)[2:]):
                out = -(-size // stride[i])
                total = max(0, (out - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - size)
                small, big = total // 2, total - total // 2
                pads[i], pads[i + rank] = (small, big) if auto == "SAME_UPPER" else (big, small)
            return pads
        pads = [int(p) for p in attrs.get("pads", [0] * (2 * rank))]
        if len(pads) != 2 * rank:
            raise ModelFormatError(
                f"ONNX node {node_name(node)!r} ({node.op_type}) has pads {pads} for {rank} spatial axes",
                fix="pads lists a begin and an end for every spatial axis; the file is corrupt",
            )
        return pads

    def pad_layer(self, node: onnx.NodeProto, source: str, pads: list[int], value: float = 0.0) -> str:
        """A Pad layer (ONNX's pads order) before the layer ``node`` becomes."""
        name = self.unique(f"{node_name(node)}/pad")
        self.add(Layer(name, "Pad", inputs=[source], outputs=[name], params={"pads": pads, "value": value}))
        return name

    @staticmethod
    def node_name(node: onnx.NodeProto) -> str:
        """See :func:`node_name`."""
        return node_name(node)


def node_name(node: onnx.NodeProto) -> str:
    """A node's layer name: its own, or (converters often leave nodes unnamed) the name of
    its first output, which is what Netron shows and stays put when other nodes change."""
    return node.name or next((name for name in node.output if name), node.op_type)


def _dispatch() -> dict[str, list]:
    table: dict[str, list] = collections.defaultdict(list)
    for kind in registered_types().values():
        for op in kind.onnx_ops:
            table[op].append(kind)
    return table


def _unsupported(model: onnx.ModelProto, table: dict, folded: set[int]) -> None:
    counts = collections.Counter(
        n.op_type
        for index, n in enumerate(model.graph.node)
        if n.op_type not in table and n.op_type not in _PASS_THROUGH and n.op_type != "Constant" and index not in folded
    )
    if counts:
        listing = ", ".join(f"{op} x{count}" for op, count in sorted(counts.items()))
        raise ModelFormatError(
            f"the ONNX file uses operators surgery does not support: {listing}",
            fix="export with constant folding (or simplify the model) so these disappear",
        )


def _small_constant(graph: onnx.GraphProto, weights: Weights, limit: int = 1) -> Callable[[str], np.ndarray | None]:
    """A lookup of the constants a fusion compares: initializers (read as every weight is
    read) and Constant nodes, of at most ``limit`` elements."""
    initializers = {t.name: t for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t

    def value(name: str) -> np.ndarray | None:
        tensor = initializers.get(name)
        if tensor is not None:
            return weights.array(tensor) if int(np.prod(tensor.dims)) <= limit else None
        tensor = constants.get(name)
        if tensor is None or tensor.data_location == _EXTERNAL or int(np.prod(tensor.dims)) > limit:
            return None
        return to_array(tensor)

    return value


def _input_shape(value: onnx.ValueInfoProto, given: tuple[int, ...] | None) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim
    file_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if given is not None:
        if len(given) != len(file_shape) or any(f is not None and f != g for f, g in zip(file_shape[1:], given[1:])):
            raise ShapeError(
                f"input {value.name!r} has shape {file_shape} in the file, not {list(given)}",
                fix="pass an input shape that matches the model (any batch size)",
            )
        return tuple(given)
    if any(d is None for d in file_shape[1:]):
        raise ShapeError(f"input {value.name!r} has symbolic axes {file_shape}", fix="give input_shape in the spec")
    return tuple(d or 1 for d in file_shape)


def import_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None, name: str | None = None) -> Net:
    """Read an ONNX file into a :class:`Net`.

    Args:
        path: the ``.onnx`` file (external data must sit in its folder).
        input_shape: the input's shape; default: the file's (a symbolic batch axis becomes 1).
        name: the net's name (default: the graph's).

    Raises:
        ModelFormatError: unreadable file, or operators surgery does not support (all
            listed, with counts).

    Example:
        >>> net = import_onnx("resnet18.onnx")
    """
    path = Path(path)
    model, weights = _load(path)
    fuse_gelu(model.graph, _small_constant(model.graph, weights))
    masks = _small_constant(model.graph, weights, limit=1 << 24)
    drop_nan_guards(model.graph, masks)  # before the zero masks go: it reads them
    drop_zero_masks(model.graph, masks)
    table = _dispatch()
    folded = constant_nodes(model.graph)
    _unsupported(model, table, folded)
    net = Net(name or model.graph.name or path.stem)
    reader = OnnxReader(model, weights, net)
    for value in model.graph.input:
        if value.name in reader.initializers:
            continue  # old exporters list initializers as inputs too
        shape = _input_shape(value, input_shape)
        reader.batch = shape[0]
        dims = value.type.tensor_type.shape.dim
        reader.file_batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        reader.add(Layer(reader.unique(value.name), "Input", outputs=[value.name], params={"shape": shape}))
    for index, node in enumerate(model.graph.node):
        checkpoint()  # a 100,000-node file takes seconds: Ctrl-C / SIGTERM stop it here
        if index in folded:
            values = {name: reader.const(name) for name in node.input if name}
            reader.constants.update(fold(node, values, reader.opset))  # type: ignore[arg-type]
        else:
            _import_node(node, reader, table)
    outputs = [reader.alias.get(o.name, o.name) for o in model.graph.output]
    net.set_outputs(outputs)
    net.shapes()
    return net


def _import_node(node: onnx.NodeProto, reader: OnnxReader, table: dict) -> None:
    if node.op_type == "Constant":
        value = reader.attrs(node).get("value")
        if value is None:
            raise ModelFormatError(f"Constant node {node.name!r} has no tensor value")
        reader.constants[node.output[0]] = reader.weights.stored(value)
        return
    if node.op_type in _PASS_THROUGH:
        reader.alias[node.output[0]] = reader.alias.get(node.input[0], node.input[0])
        return
    if node.output and all(reader.net.has_blob(reader.alias.get(o, o)) for o in node.output if o):
        return  # a layer type that reads a pattern of nodes (from_onnx) already wrote these
    for kind in table[node.op_type]:
        try:
            if kind.from_onnx(node, reader) is not None:
                return
        except ShapeError as error:  # a layer type refused the input: say which node it was
            if not error.message.startswith("ONNX node"):
                error.message = f"ONNX node {node_name(node)!r} ({node.op_type}) on {_operands(node, reader)}: " + (
                    error.message
                )
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as error:
            # A layer type reads the node's attributes as the ONNX spec defines them; a
            # value of another type or size means a corrupt (e.g. bit-flipped) file.
            raise ModelFormatError(
                f"ONNX node {node_name(node)!r} ({node.op_type}) cannot be read ({type(error).__name__}: {error})",
                fix=_CORRUPT,
            ) from None
    attributes = ", ".join(f"{k}={v!r}" for k, v in reader.attrs(node).items()) or "no attributes"
    raise ModelFormatError(
        f"ONNX node {node_name(node)!r} ({node.op_type}) on {_operands(node, reader)} with {attributes}: "
        f"no layer type of surgery computes this form of {node.op_type}",
        fix=f"see the README's ONNX mapping for the {node.op_type} forms surgery reads; export the model so that "
        "this node takes one of them, or leave it out of the exported part",
    )


def _operands(node: onnx.NodeProto, reader: OnnxReader) -> str:
    """What a node reads, for an error: each input's shape, and whether it is a constant."""
    described = []
    for name in node.input:
        if not name:
            continue
        shape = reader.const_shape(name)
        if shape is not None:
            described.append(f"a constant {shape}")
        else:
            blob = reader.alias.get(name, name)
            described.append(f"a {reader.shapes[blob]} input" if blob in reader.shapes else f"{name!r}")
    return ", ".join(described) or "no inputs"
