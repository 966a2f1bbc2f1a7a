"""Deploy files in smaller precisions, made from the float32 file by the libraries that
own the conversion: onnxconverter-common's ``float16`` for FP16, onnxruntime's quantizer
for INT8 (static QDQ with per-channel weights, calibrated on the user's images; dynamic
for a net without convolutions). Nothing here rewrites a graph by hand.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from surgery.errors import SpecError

if TYPE_CHECKING:
    import onnx

#: Operators FP16 keeps in float32 besides onnxconverter-common's own list: resizing (its
#: coordinate arithmetic), and the normalisations whose sums overflow half precision.
FP16_FLOAT_OPS = ("Resize", "Upsample", "LayerNormalization", "GroupNormalization", "Softmax", "LogSoftmax")

#: The spec's calibration methods, by their onnxruntime names.
METHODS = {"MINMAX": "MinMax", "ENTROPY": "Entropy", "PERCENTILE": "Percentile"}


def nodes_of(model: onnx.ModelProto, layers: Iterable[str]) -> list[str]:
    """The names of the nodes the given layers became (a layer's node carries its name, or
    its name and a ``/suffix`` where it needs several)."""
    wanted = set(layers)
    return [
        node.name
        for node in model.graph.node
        if node.name in wanted or node.name.split("/", 1)[0] in wanted or node.name.rsplit("/", 1)[0] in wanted
    ]


def to_fp16(model: onnx.ModelProto, *, keep_io_types: bool = True, keep_nodes: Iterable[str] = ()) -> onnx.ModelProto:
    """``model`` with weights and compute in half precision, except the operators of
    :data:`FP16_FLOAT_OPS` and onnxconverter-common's own list, and ``keep_nodes``.

    Args:
        model: a float32 model.
        keep_io_types: inputs and outputs stay float32 (a Cast at each inside the file).
        keep_nodes: names of nodes kept in float32.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise SpecError(
            "precision: FP16 needs onnxconverter-common", fix='pip install "surgery-nets[deploy]"'
        ) from None
    blocked = [*float16.DEFAULT_OP_BLOCK_LIST, *FP16_FLOAT_OPS]
    with warnings.catch_warnings():  # one warning per tiny weight rounded to fp16's smallest
        warnings.filterwarnings("ignore", module="onnxconverter_common")
        converted = float16.convert_float_to_float16(
            model, keep_io_types=keep_io_types, op_block_list=blocked, node_block_list=list(keep_nodes)
        )
    if keep_io_types:
        _outputs_back_to_float32(model, converted)
    return converted


def _outputs_back_to_float32(original: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """onnxconverter-common 1.16 declares a graph output float16, keep_io_types or not,
    when the node writing it is one it kept in float32 (it casts that node's result back
    to float16): such an output gets a Cast to float32 at the end, under its own name."""
    from onnx import TensorProto, helper

    was_float = {v.name for v in original.graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for value in model.graph.output:
        kind = value.type.tensor_type
        if value.name not in was_float or kind.elem_type != TensorProto.FLOAT16:
            continue
        half = f"{value.name}/float16"
        for node in model.graph.node:
            node.output[:] = [half if name == value.name else name for name in node.output]
            node.input[:] = [half if name == value.name else name for name in node.input]
        model.graph.node.append(
            helper.make_node("Cast", [half], [value.name], name=f"{value.name}/to_float32", to=TensorProto.FLOAT)
        )
        kind.elem_type = TensorProto.FLOAT


class _Batches:
    """onnxruntime's CalibrationDataReader over an array of inputs, one at a time."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self.name = name
        self.items: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.items, None)
        return None if item is None else {self.name: item[None]}

    def rewind(self) -> None:  # onnxruntime's reader API; one pass is all calibration takes
        raise NotImplementedError


def to_int8(
    model: onnx.ModelProto, *, inputs: np.ndarray | None, method: str = "MINMAX", keep_nodes: Iterable[str] = ()
) -> onnx.ModelProto:
    """``model`` quantized to INT8 by onnxruntime: static QDQ (unsigned 8-bit activations,
    signed per-channel 8-bit weights) calibrated on ``inputs`` (the batch ``(N, ...)`` of
    its single input), or dynamic (weights only, activations quantized as they come) when
    ``inputs`` is None.

    Args:
        model: a float32 model.
        inputs: calibration inputs, or None for dynamic quantization.
        method: ``MINMAX``, ``ENTROPY`` or ``PERCENTILE``.
        keep_nodes: names of nodes left in float32.
    """
    # The quantizer logs a warning through the root logger for each 1-D weight (a
    # LayerNorm's) that per-channel quantization leaves per-tensor: expected, and noise.
    logging.disable(logging.WARNING)
    try:
        return _quantize(model, inputs, method, list(keep_nodes))
    finally:
        logging.disable(logging.NOTSET)


def _quantize(model: onnx.ModelProto, inputs: np.ndarray | None, method: str, keep_nodes: list[str]) -> onnx.ModelProto:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="surgery-int8-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, source)
        # onnxruntime's own preparation (shape inference, graph optimisation) before quantizing.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if inputs is None:
            quantize_dynamic(
                prepared, target, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep_nodes
            )
        else:
            quantize_static(
                prepared,
                target,
                _Batches(model.graph.input[0].name, inputs),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                nodes_to_exclude=keep_nodes,
            )
        return onnx.load(target)
