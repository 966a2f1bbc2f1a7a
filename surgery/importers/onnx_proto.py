"""ONNX's protobuf messages, read without importing the onnx package when it can be.

``import onnx`` costs over half a second (most of it ml_dtypes, which onnx imports for its
8- and 4-bit float types) before a byte of the file is read: more than ``inspect`` of a
small model is allowed to take. The message classes themselves are protobuf's, generated
into the onnx package's ``onnx_ml_pb2`` module, which imports nothing but protobuf: loaded
from its file, it gives the same classes as ``import onnx`` (protobuf keeps one class per
descriptor), so messages read here work with every onnx helper later.

The helpers below are onnx's ``get_attribute_value``, ``tensor_dtype_to_np_dtype`` and
``numpy_helper.to_array`` for the types a model's structure uses (numbers, bool; plain
attributes). Anything else (bfloat16, float8, strings, typed fields of float16) is
handed to onnx's own functions, importing onnx then. ``tests/test_onnx_proto.py`` checks
them against onnx's on every model of onnx's backend test data.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import AttributeProto, TensorProto


def messages() -> ModuleType:
    """The module holding ONNX's message classes (``ModelProto``, ``TensorProto``, ...)."""
    onnx = sys.modules.get("onnx")
    if onnx is not None and hasattr(onnx, "onnx_ml_pb2"):
        return onnx.onnx_ml_pb2
    return _generated()


@functools.cache
def _generated() -> ModuleType:
    spec = importlib.util.find_spec("onnx")  # finds the package without running it
    folder = next(iter(spec.submodule_search_locations or []), None) if spec else None
    path = Path(folder) / "onnx_ml_pb2.py" if folder else None
    if path is None or not path.is_file():
        return importlib.import_module("onnx").onnx_ml_pb2
    loaded = importlib.util.spec_from_file_location("surgery.importers._onnx_ml_pb2", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


#: TensorProto data types numpy has, by their enum name.
_NUMPY_NAMES = {
    "FLOAT": "float32",
    "DOUBLE": "float64",
    "FLOAT16": "float16",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "BOOL": "bool",
    "COMPLEX64": "complex64",
    "COMPLEX128": "complex128",
}
#: The typed field holding each type's values when a tensor has no raw_data (float16's
#: bit patterns in int32_data are left to onnx).
_TYPED_FIELD = {
    "float32": "float_data",
    "float64": "double_data",
    "int8": "int32_data",
    "int16": "int32_data",
    "int32": "int32_data",
    "uint8": "int32_data",
    "uint16": "int32_data",
    "bool": "int32_data",
    "int64": "int64_data",
    "uint32": "uint64_data",
    "uint64": "uint64_data",
}


def _numpy_name(data_type: int) -> str | None:
    try:
        return _NUMPY_NAMES.get(messages().TensorProto.DataType.Name(data_type))
    except ValueError:  # a code that is no type: onnx's functions say so
        return None


def np_dtype(data_type: int) -> np.dtype:
    """The numpy dtype of a TensorProto data type (onnx's ``tensor_dtype_to_np_dtype``);
    a KeyError or ValueError for a code that is no type."""
    name = _numpy_name(data_type)
    if name is not None:
        return np.dtype(name)
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(data_type)


def to_array(tensor: TensorProto) -> np.ndarray:
    """A tensor's values held in the message (onnx's ``numpy_helper.to_array``)."""
    proto = messages().TensorProto
    name = _numpy_name(tensor.data_type)
    dims = tuple(int(d) for d in tensor.dims)
    plain = name is not None and not tensor.HasField("segment") and tensor.data_location != proto.EXTERNAL
    if plain and tensor.HasField("raw_data"):
        little = np.dtype(name).newbyteorder("<")
        return np.frombuffer(tensor.raw_data, dtype=little).astype(np.dtype(name), copy=False).reshape(dims)
    if plain and name in _TYPED_FIELD:
        return np.asarray(getattr(tensor, _TYPED_FIELD[name]), dtype=np.dtype(name)).reshape(dims)
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


#: AttributeProto types whose value is one field, and those whose value is a list.
_ONE = {"FLOAT": "f", "INT": "i", "STRING": "s", "TENSOR": "t", "GRAPH": "g", "SPARSE_TENSOR": "sparse_tensor"}
_ONE |= {"TYPE_PROTO": "tp"}
_LIST = {"FLOATS": "floats", "INTS": "ints", "STRINGS": "strings", "TENSORS": "tensors", "GRAPHS": "graphs"}
_LIST |= {"SPARSE_TENSORS": "sparse_tensors", "TYPE_PROTOS": "type_protos"}


def attribute_value(attribute: AttributeProto) -> Any:
    """An attribute's value (onnx's ``helper.get_attribute_value``)."""
    kind = messages().AttributeProto.AttributeType.Name(attribute.type) if not attribute.ref_attr_name else ""
    if kind in _ONE:
        return getattr(attribute, _ONE[kind])
    if kind in _LIST:
        return list(getattr(attribute, _LIST[kind]))
    if kind == "UNDEFINED":
        return None
    from onnx import helper

    return helper.get_attribute_value(attribute)  # raises its own error for the rest
