"""ONNX emitter: the IR written with onnx.helper (not through torch.onnx.export).

Node names are the layer names and initializer names derive from them
(``<layer>.<role>``), so Netron shows the spec's names. The opset and IR version are
set explicitly (onnx's own defaults are newer than onnxruntime accepts). Every file
passes ``onnx.checker`` (full check) and strict shape inference before it is moved
into place, atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from surgery.errors import ModelFormatError, SurgeryError
from surgery.ir import Layer, Net, Shape
from surgery.layers import layer_type

DEFAULT_OPSET = 17
#: The IR version each opset first needs; onnxruntime accepts up to IR 10 here.
IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3  # protobuf's 2 GB message limit

_DTYPES = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE, torch.float16: TensorProto.FLOAT16,
           torch.int64: TensorProto.INT64, torch.int32: TensorProto.INT32}


class OnnxWriter:
    """What a layer type's ``to_onnx`` hook writes into: nodes and initializers."""

    def __init__(self, net: Net, opset: int) -> None:
        self.net = net
        self.opset = opset
        self.shapes = net.shapes()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        """Add one node; ``name`` should be the layer's (suffixed when a layer needs several)."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def weight(self, layer: Layer, role: str, tensor: torch.Tensor | None = None) -> str:
        """An initializer ``<layer>.<role>`` holding the blob (or ``tensor``); its name."""
        data = layer.blobs[role].data if tensor is None else tensor
        return self.const(f"{layer.name}.{role}", data.detach().cpu().contiguous().numpy())

    def const(self, name: str, array: np.ndarray | list) -> str:
        """An initializer with a fixed value (a shape, a scale); its name."""
        if name in self._names:
            raise SurgeryError(f"two initializers would be called {name!r}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def in_shapes(self, layer: Layer) -> list[Shape | None]:
        return [self.shapes[b] for b in layer.inputs]


def _value_info(name: str, shape: Shape, dynamic_batch: bool) -> onnx.ValueInfoProto:
    dims: list[Any] = list(shape)
    if dynamic_batch and dims:
        dims[0] = "batch"
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


def build_model(net: Net, *, opset: int = DEFAULT_OPSET, ir_version: int | None = None, dynamic_batch: bool = True,
                keep_train_branches: bool = False) -> onnx.ModelProto:
    """The ONNX model of ``net`` (deploy outputs only unless ``keep_train_branches``)."""
    if opset < 17:
        raise SurgeryError(f"opset {opset} is too old", fix="use opset 17 or newer")
    writer = OnnxWriter(net, opset)
    layers, outputs = _deploy_layers(net, keep_train_branches)
    inputs = []
    for layer in layers:
        if layer.type == "Input":
            inputs.append(_value_info(layer.outputs[0], writer.shapes[layer.outputs[0]], dynamic_batch))
            continue
        layer_type(layer.type).to_onnx(layer, writer)
    graph = helper.make_graph(
        writer.nodes, net.name, inputs,
        [_value_info(blob, writer.shapes[blob], dynamic_batch) for blob in outputs],
        writer.initializers,
    )
    ir = ir_version or IR_FOR_OPSET.get(opset, 10)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir,
                              producer_name="surgery")
    return model


def check_model(model: onnx.ModelProto, path: Path | None = None) -> None:
    """Full checker + strict shape inference (on the file when it has external data)."""
    try:
        onnx.checker.check_model(str(path) if path is not None else model, full_check=True)
        if path is None:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SurgeryError(f"the ONNX model does not check: {str(error).strip().splitlines()[0]}") from None


def emit_onnx(net: Net, path: str | Path, *, opset: int = DEFAULT_OPSET, ir_version: int | None = None,
              dynamic_batch: bool = True, external_data: bool | None = None,
              keep_train_branches: bool = False) -> Path:
    """Write ``net`` as an ONNX file, atomically.

    Args:
        net: the net (train-only layers, e.g. auxiliary heads, are left out unless
            ``keep_train_branches``).
        path: the file to write.
        opset: ONNX opset (>= 17).
        ir_version: ONNX IR version (default: the one ``opset`` needs).
        dynamic_batch: make axis 0 of inputs and outputs symbolic (``batch``).
        external_data: store weights in ``<file>.data`` beside it; default: only past 2 GB.

    Returns:
        The path written.

    Example:
        >>> emit_onnx(net, "out/model.onnx")
    """
    path = Path(path)
    model = build_model(net, opset=opset, ir_version=ir_version, dynamic_batch=dynamic_batch,
                        keep_train_branches=keep_train_branches)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    external = external_data if external_data is not None else size > EXTERNAL_DATA_THRESHOLD
    if not external:
        check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        if external:
            data_name = path.name + ".data"
            onnx.save_model(model, temp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            check_model(model, Path(temp))
        else:
            onnx.save_model(model, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def unsupported(layer: Layer) -> ModelFormatError:
    """The error for a layer that has no ONNX form."""
    return ModelFormatError(
        f"layer {layer.name!r} ({layer.type}) cannot be written to ONNX",
        fix="replace or remove it in the spec, or emit PyTorch only",
        subject=layer.name,
    )
