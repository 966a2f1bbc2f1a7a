"""ONNX emitter: the IR written with onnx.helper (not through torch.onnx.export).

Node names are the layer names and initializer names derive from them
(``<layer>.<role>``), so Netron shows the spec's names. The opset and IR version are
set explicitly (onnx's own defaults are newer than onnxruntime accepts). Every file
passes ``onnx.checker`` (full check) and strict shape inference before it is moved
into place, atomically.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgery.emitters import onnx_dynamic, onnx_traced
from surgery.emitters.files import FileLog, output_file
from surgery.errors import ShapeError, SpecError, SurgeryError
from surgery.interrupts import checkpoint
from surgery.ir import Layer, Net, Shape
from surgery.layers import layer_type
from surgery.layers.time_fold import lower_time
from surgery.lazy_torch import torch

DEFAULT_OPSET = 17
#: The IR version each opset first needs; onnxruntime accepts up to IR 10 here.
IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's 2 GB message limit

MIN_OPSET = 17


@functools.cache
def supported_versions() -> tuple[int, int, int]:
    """``(max opset, min IR, max IR)`` that the installed onnx knows and the installed
    onnxruntime (when present) loads, found by loading a one-node model."""
    top_opset, top_ir = onnx.defs.onnx_opset_version(), onnx.IR_VERSION
    try:
        import onnxruntime
    except ImportError:
        return top_opset, IR_FOR_OPSET[MIN_OPSET], top_ir

    def loads(opset: int, ir: int) -> bool:
        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "probe",
            [value],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001  (any refusal means: not supported)
            return False
        return True

    base_ir = IR_FOR_OPSET[MIN_OPSET]
    max_opset = max(
        (o for o in range(MIN_OPSET, top_opset + 1) if loads(o, IR_FOR_OPSET.get(o, 10))), default=MIN_OPSET
    )
    max_ir = max((ir for ir in range(base_ir, top_ir + 1) if loads(MIN_OPSET, ir)), default=base_ir)
    return max_opset, base_ir, max_ir


def check_versions(opset: int | None, ir_version: int | None) -> None:
    """Refuse an opset / IR version the installed onnx or onnxruntime cannot handle, before
    anything is written (a file onnxruntime refuses is no deploy file)."""
    if ir_version is None and opset in IR_FOR_OPSET:
        return  # the opsets this emitter is tested with: no need to probe onnxruntime
    max_opset, min_ir, max_ir = supported_versions()
    if opset is not None and not MIN_OPSET <= opset <= max_opset:
        raise SpecError(
            f"opset {opset} is outside what the installed onnx / onnxruntime support ({MIN_OPSET} to {max_opset})",
            fix=f"use an opset from {MIN_OPSET} to {max_opset}",
            subject=str(opset),
        )
    needed = IR_FOR_OPSET.get(opset or DEFAULT_OPSET, min_ir)
    if ir_version is not None and not max(min_ir, needed) <= ir_version <= max_ir:
        raise SpecError(
            f"IR version {ir_version} is outside what the installed onnx / onnxruntime support with "
            f"opset {opset or DEFAULT_OPSET} ({max(min_ir, needed)} to {max_ir})",
            fix="leave ir_version out (the opset's own is used)",
            subject=str(ir_version),
        )


class OnnxWriter:
    """What a layer type's ``to_onnx`` hook writes into: nodes and initializers."""

    def __init__(self, net: Net, opset: int, keep_adapters: bool = False) -> None:
        self.net = net
        self.opset = opset
        #: write low-rank adapters as nodes beside their layers, not merged into them
        self.keep_adapters = keep_adapters
        self.shapes = net.shapes()
        self.nodes: list[onnx.NodeProto] = []
        #: initializer name -> contiguous numpy array (weights are not copied into protobuf)
        self.tensors: dict[str, np.ndarray] = {}
        self._batched: set[str] | None = None
        #: exported graphs of opaque calls, by what they depend on (see onnx_traced)
        self.traced_graphs: dict[tuple, onnx.GraphProto] = {}

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        """Add one node; ``name`` should be the layer's (suffixed when a layer needs several)."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def weight(self, layer: Layer, role: str, tensor: torch.Tensor | np.ndarray | None = None) -> str:
        """An initializer ``<layer>.<role>`` holding the blob (or ``tensor``, an array or a
        torch tensor); its name. A blob still holding a model file's values is written from
        them without torch.

        A layer calling a module another layer owns (``extra["module_path"]``) reads the
        owner's initializer, written once. A name that is also a blob of the net (a
        module's parameter the traced model reads directly) gets ``#init`` appended."""
        owner = layer.extra.get("module_path")
        if tensor is None and role not in layer.blobs and owner is not None:
            name = self._initializer_name(self.net.layer(owner).name, role)
            if name in self.tensors:
                return name
            layer = self.net.layer(owner)
        if tensor is None:
            array = layer.blobs[role].array()
        else:
            array = tensor if isinstance(tensor, np.ndarray) else tensor.detach().cpu().contiguous().numpy()
        return self.const(self._initializer_name(layer.name, role), array)

    def _initializer_name(self, layer_name: str, role: str) -> str:
        name = f"{layer_name}.{role}"
        return f"{name}#init" if self.net.has_blob(name) else name

    def const(self, name: str, array: np.ndarray | list) -> str:
        """An initializer with a fixed value (a shape, a scale); its name."""
        if name in self.tensors:
            raise SurgeryError(f"two initializers would be called {name!r}")
        self.tensors[name] = np.ascontiguousarray(array)
        return name

    def in_shapes(self, layer: Layer) -> list[Shape | None]:
        return [self.shapes[b] for b in layer.inputs]

    def traced(self, layer: Layer) -> None:
        """Write a layer surgery does not model (an opaque module or call) through
        torch's own exporter (see :mod:`surgery.emitters.onnx_traced`)."""
        onnx_traced.write_traced(self, layer)

    def batched(self) -> set[str]:
        """Blobs computed from a net input (their axis 0 is the batch)."""
        if self._batched is None:
            self._batched = set()
            for layer in self.net.layers():
                if layer.type == "Input" or any(b in self._batched for b in layer.inputs):
                    self._batched.update(layer.outputs)
        return self._batched


def _value_info(name: str, shape: Shape | None, dynamic: set[int]) -> onnx.ValueInfoProto:
    """A float tensor's type; axis 0 of a dynamic set is "batch", others "<name>_<axis>"."""
    if shape is None:  # a graph input or output must be a tensor of known shape
        raise ShapeError(f"blob {name!r} has no known tensor shape, so it cannot be an ONNX input or output")
    dims: list[Any] = [
        ("batch" if axis == 0 else f"{name}_{axis}") if axis in dynamic else size for axis, size in enumerate(shape)
    ]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _deploy_layers(net: Net, keep_train_branches: bool) -> tuple[list[Layer], list[str]]:
    if keep_train_branches:
        return list(net.layers()), net.outputs
    outputs = net.outputs_for(None)
    needed: set[str] = set()
    for blob in outputs:
        producer = net.producer(blob).name
        needed |= net.ancestors(producer) | {producer}
    return [layer for layer in net.layers() if layer.name in needed], outputs


def _write_layers(
    net: Net, opset: int, keep_train_branches: bool, keep_adapters: bool = False
) -> tuple[OnnxWriter, list[Layer], list[str]]:
    """Every deployed layer's nodes and initializers; the input layers; the outputs."""
    writer = OnnxWriter(net, opset, keep_adapters)
    layers, outputs = _deploy_layers(net, keep_train_branches)
    for layer in layers:
        if layer.type != "Input":
            layer_type(layer.type).to_onnx(layer, writer)
    return writer, [layer for layer in layers if layer.type == "Input"], outputs


def build_parts(
    net: Net,
    *,
    opset: int = DEFAULT_OPSET,
    ir_version: int | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Iterable[int]] | None = None,
    keep_train_branches: bool = False,
    adapters: str = "MERGED",
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The ONNX model of ``net`` without its initializers, and the initializers' values
    (deploy outputs only unless ``keep_train_branches``). ``dynamic_axes``: input name
    -> axes to leave symbolic besides the batch (see :mod:`surgery.emitters.onnx_dynamic`).
    ``adapters``: ``MERGED`` folds low-rank adapters into their layers, ``KEEP`` writes
    them as nodes beside them."""
    if opset < MIN_OPSET:
        raise SurgeryError(f"opset {opset} is too old", fix=f"use opset {MIN_OPSET} or newer")
    pretrained, preprocess = net.pretrained, net.preprocess
    net = lower_time(net)  # a clip model: per-frame layers on N*T frames
    axes = onnx_dynamic.resolve(net, dynamic_axes, dynamic_batch)
    keep = adapters == "KEEP"
    writer, input_layers, outputs = _write_layers(net, opset, keep_train_branches, keep)
    batch = {0} if dynamic_batch else set()
    output_axes = {blob: batch for blob in outputs}
    if any(axis for wanted in axes.values() for axis in wanted):
        resized = onnx_dynamic.resized_copy(net, axes)
        onnx_dynamic.check_same_graph(writer, _write_layers(resized, opset, keep_train_branches, keep)[0])
        output_axes = {
            blob: varying | batch for blob, varying in onnx_dynamic.varying_axes(net, resized, outputs).items()
        }
    inputs = [
        _value_info(layer.outputs[0], writer.shapes[layer.outputs[0]], axes[layer.outputs[0]]) for layer in input_layers
    ]
    graph = helper.make_graph(
        writer.nodes,
        net.name,
        inputs,
        [_value_info(blob, writer.shapes[blob], output_axes[blob]) for blob in outputs],
    )
    ir = ir_version or IR_FOR_OPSET.get(opset, 10)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir, producer_name="surgery"
    )
    metadata = {}  # what a deployment needs to feed the net as it was trained
    if pretrained is not None:
        metadata["surgery.pretrained"] = pretrained["name"]
    if preprocess is not None:
        metadata["surgery.preprocessing"] = json.dumps(preprocess.to_dict(), sort_keys=True)
    if metadata:
        helper.set_model_props(model, metadata)
    return model, writer.tensors


def build_model(net: Net, **options: Any) -> onnx.ModelProto:
    """The complete ONNX model of ``net`` in memory (initializers included)."""
    model, tensors = build_parts(net, **options)
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in tensors.items())
    return model


def _skeleton(model: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with its initializers declared as typed graph inputs: the same graph,
    names, types and shapes for the checker, without a copy of any weight."""
    checked = onnx.ModelProto()
    checked.CopyFrom(model)
    checked.graph.input.extend(
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
        for name, a in tensors.items()
    )
    return checked


def check_model(model: onnx.ModelProto, tensors: dict[str, np.ndarray]) -> None:
    """Full checker + strict shape inference on the model's structure (names, types,
    shapes, operator schemas). Weight values are left out of the check (serialising
    them twice more would triple the write time); their types and shapes are checked."""
    skeleton = _skeleton(model, tensors)
    try:
        onnx.checker.check_model(skeleton, full_check=True)
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SurgeryError(f"the ONNX model does not check: {str(error).strip().splitlines()[0]}") from None


def emit_onnx(
    net: Net,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    ir_version: int | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Iterable[int]] | None = None,
    external_data: bool | None = None,
    keep_train_branches: bool = False,
    adapters: str = "MERGED",
    log: FileLog | None = None,
) -> Path:
    """Write ``net`` as an ONNX file, atomically.

    Args:
        net: the net (train-only layers, e.g. auxiliary heads, are left out unless
            ``keep_train_branches``).
        path: the file to write.
        opset: ONNX opset (>= 17).
        ir_version: ONNX IR version (default: the one ``opset`` needs).
        dynamic_batch: make axis 0 of inputs and outputs symbolic (``batch``).
        dynamic_axes: input name -> further axes to make symbolic (``{"data": [2, 3]}``);
            refused, naming the node, when a layer's ONNX form depends on that size.
        external_data: store weights in ``<file>.data`` beside it; default: only past 2 GB.
        keep_train_branches: keep train-only branches (auxiliary heads).
        adapters: ``MERGED`` (low-rank adapters folded into their layers) or ``KEEP``
            (written as nodes beside them).
        log: records the sha256 and size of each file written.

    Returns:
        The path written.

    Example:
        >>> emit_onnx(net, "out/model.onnx")
    """
    path = Path(path)
    model, tensors = build_parts(
        net,
        opset=opset,
        ir_version=ir_version,
        dynamic_batch=dynamic_batch,
        dynamic_axes=dynamic_axes,
        keep_train_branches=keep_train_branches,
        adapters=adapters,
    )
    size = sum(a.nbytes for a in tensors.values())
    external = external_data if external_data is not None else size > EXTERNAL_DATA_THRESHOLD
    check_model(model, tensors)
    if external:
        data_path = path.with_name(path.name + ".data")
        with output_file(path, log) as out, output_file(data_path, log, stable=tensors.values()) as data:
            write_model(out, model, tensors, data, data_path.name)
    else:
        with output_file(path, log, stable=tensors.values()) as out:
            write_model(out, model, tensors)
    return path


# ---- streaming writer ---------------------------------------------------------------
# A ModelProto is written field by field: the small parts serialised by protobuf, each
# weight's bytes straight from the tensor's memory (a memory-mapped source included).
# protobuf parsers accept fields in any order and repeated fields one by one, so the file
# is exactly what serialising the complete ModelProto would give, minus two full copies.
_GRAPH_FIELD, _INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | 2)  # length-delimited


def _tensor_head(name: str, array: np.ndarray, location: str | None, offset: int) -> onnx.TensorProto:
    head = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    head.dims.extend(array.shape)
    if location is not None:
        head.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = head.external_data.add()
            entry.key, entry.value = key, value
    return head


def write_model(
    out, model: onnx.ModelProto, tensors: dict[str, np.ndarray], data=None, location: str | None = None
) -> None:
    """Write ``model`` with ``tensors`` as its initializers to the binary file ``out``;
    with ``data``, the weights go to that file instead (external data at ``location``)."""
    # Fields are written in field-number order, as protobuf does: the model's fields
    # before `graph` (7), the graph's before `initializer` (5), the initializers, the rest.
    model_head, model_tail = _split(model, 7)
    graph_head, graph_tail = _split(model.graph, 5)
    pieces: list[tuple[bytes, memoryview | None]] = []
    offset = 0
    for name, array in tensors.items():
        head = _tensor_head(name, array, location, offset).SerializeToString()
        if data is None:
            raw = np.ascontiguousarray(array).data.cast("B")
            body = head + _tag(_RAW_DATA_FIELD) + _varint(len(raw))
            pieces.append((_tag(_INITIALIZER_FIELD) + _varint(len(body) + len(raw)) + body, raw))
        else:
            data.write(np.ascontiguousarray(array).data.cast("B"))
            offset += array.nbytes
            pieces.append((_tag(_INITIALIZER_FIELD) + _varint(len(head)) + head, None))
    graph_length = len(graph_head) + len(graph_tail) + sum(len(p) + (len(r) if r is not None else 0) for p, r in pieces)
    out.write(model_head)
    out.write(_tag(_GRAPH_FIELD) + _varint(graph_length))
    out.write(graph_head)
    for prefix, values in pieces:
        checkpoint()  # a Ctrl-C stops the write between two initializers
        out.write(prefix)
        if values is not None:
            out.write(values)
    out.write(graph_tail)
    out.write(model_tail)


def _split(message: Any, field_number: int) -> tuple[bytes, bytes]:
    """The serialised fields of ``message`` numbered below and above ``field_number``."""
    below, above = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.number == field_number:
            continue
        target = below if field.number < field_number else above
        if hasattr(value, "extend"):  # a repeated field (protobuf 7 dropped FieldDescriptor.label)
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)
    return below.SerializeToString(), above.SerializeToString()
