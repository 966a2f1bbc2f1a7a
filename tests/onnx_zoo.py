"""The ONNX model zoo's classic image models as their real files look, made from the
graphs the onnx package ships (``onnx/backend/test/data/light``: the zoo's files with
every weight replaced by a ``ConstantOfShape``).

:func:`zoo_classic` puts seeded weights back as initializers, lists them among the
graph inputs and clears the node names, as the Caffe2-era files do (IR 3, opset 9):
the same operators, attributes, tensor names and shapes as the files users download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"
CLASSICS = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]


def zoo_classic(name: str, folder: Path, seed: int = 0) -> Path:
    """``folder/<name>.onnx``: the classic with seeded weights (written once)."""
    out = folder / f"{name}.onnx"
    if out.exists():
        return out
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(fan_in))
            if len(shape) == 1:  # biases, BatchNorm scales / shifts / statistics: near 1, positive
                value = np.float32(1.0) + np.float32(0.1) * rng.standard_normal(shape, dtype=np.float32)
            weights.append(numpy_helper.from_array(value, node.output[0]))
        else:
            node.name = ""  # the zoo's files name no node
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + weights)
    listed = {value.name for value in graph.input}
    for tensor in weights:  # IR 3: every initializer is also a graph input
        if tensor.name not in listed:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    unused = [value for value in graph.input if value.name not in used]
    for value in unused:
        graph.input.remove(value)
    onnx.save(model, out)
    return out
