"""surgery's reading of ONNX messages without importing onnx (``surgery.importers.onnx_proto``)
gives what onnx's own helpers give: attributes, tensors and dtypes of every kind, and every
node and tensor of the onnx package's backend test models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from surgery.importers.onnx_proto import attribute_value, messages, np_dtype, to_array

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"
NUMPY_TYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"]
NUMPY_TYPES += ["uint64", "bool", "complex64", "complex128"]


def _same_array(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def _same_value(ours: object, theirs: object) -> None:
    assert type(ours) is type(theirs)
    assert ours == theirs


@pytest.mark.parametrize("name", NUMPY_TYPES)
def test_raw_and_typed_tensors_read_as_onnx_reads_them(name: str) -> None:
    values = (np.arange(-3, 9) % 7).reshape(3, 4).astype(name)
    raw = numpy_helper.from_array(values, "raw")
    _same_array(to_array(raw), numpy_helper.to_array(raw))
    typed = helper.make_tensor("typed", helper.np_dtype_to_tensor_dtype(values.dtype), values.shape, values.flatten())
    _same_array(to_array(typed), numpy_helper.to_array(typed))
    empty = numpy_helper.from_array(values[:0], "empty")
    _same_array(to_array(empty), numpy_helper.to_array(empty))


def test_types_numpy_lacks_are_read_by_onnx() -> None:
    bf16 = helper.make_tensor("b", onnx.TensorProto.BFLOAT16, [3], [1.0, -2.5, 3.0])
    _same_array(to_array(bf16), numpy_helper.to_array(bf16))
    text = helper.make_tensor("s", onnx.TensorProto.STRING, [2], [b"a", b"bc"])
    _same_array(to_array(text), numpy_helper.to_array(text))


def test_every_data_type_code_maps_as_onnx_maps_it() -> None:
    for code in onnx.TensorProto.DataType.values():
        try:
            theirs = helper.tensor_dtype_to_np_dtype(code)
        except (KeyError, ValueError):
            with pytest.raises((KeyError, ValueError)):
                np_dtype(code)
            continue
        assert np_dtype(code) == theirs, onnx.TensorProto.DataType.Name(code)


def test_attributes_of_every_kind_read_as_onnx_reads_them() -> None:
    graph = helper.make_graph([], "g", [], [])
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float32), "t")
    values = [1.5, 7, b"text", "text", tensor, graph, [1.0, 2.0], [1, 2, 3], [b"a", b"b"], [tensor], [graph], []]
    for value in values:
        attribute = helper.make_attribute("a", value, attr_type=onnx.AttributeProto.INTS if value == [] else None)
        _same_value(attribute_value(attribute), helper.get_attribute_value(attribute))
    reference = helper.make_attribute_ref("r", onnx.AttributeProto.INT)
    with pytest.raises(ValueError):
        attribute_value(reference)


def _backend_models() -> list[Path]:
    return sorted(DATA.glob("*/*/model.onnx")) if DATA.is_dir() else []


@pytest.mark.skipif(not _backend_models(), reason="this onnx build ships no backend test data")
def test_backend_test_models_read_as_onnx_reads_them() -> None:
    models = _backend_models()
    attributes = tensors = 0
    for path in models:
        model = onnx.load(path, load_external_data=False)
        for node in model.graph.node:
            for attribute in node.attribute:
                theirs = helper.get_attribute_value(attribute)
                ours = attribute_value(attribute)
                if isinstance(theirs, onnx.TensorProto):
                    _same_array(to_array(ours), numpy_helper.to_array(theirs))
                else:
                    _same_value(ours, theirs)
                attributes += 1
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                _same_array(to_array(tensor), numpy_helper.to_array(tensor))
                tensors += 1
        for pb in sorted(path.parent.glob("test_data_set_0/*.pb"))[:4]:
            tensor = onnx.load_tensor(str(pb))
            _same_array(to_array(tensor), numpy_helper.to_array(tensor))
            tensors += 1
    assert len(models) > 100 and attributes > 200 and tensors > 300, (len(models), attributes, tensors)


def test_messages_read_before_onnx_is_imported_are_onnx_messages() -> None:
    # loaded from the onnx package's generated file, the classes are the ones `import onnx`
    # gives later in the same process (protobuf keeps one class per descriptor)
    code = (
        "import sys\n"
        "from surgery.importers.onnx_proto import messages\n"
        "early = messages().ModelProto\n"
        "assert 'onnx' not in sys.modules\n"
        "import onnx\n"
        "assert early is onnx.ModelProto, (early, onnx.ModelProto)\n"
        "empty = onnx.helper.make_model(onnx.helper.make_graph([], 'g', [], []))\n"
        "model = early.FromString(empty.SerializeToString())\n"
        "onnx.checker.check_model(model)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert messages().ModelProto is onnx.ModelProto
