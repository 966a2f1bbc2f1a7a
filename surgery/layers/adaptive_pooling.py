"""AdaptivePooling: torch's AdaptiveAvgPool2d / AdaptiveMaxPool2d (fixed output size)."""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError, unsupported_in_caffe, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer
from surgery.lazy_torch import nn


@register_layer
class AdaptivePooling(LayerType):
    """Params: pool ("AVE"|"MAX"), output_size (h, w; None keeps that input size)."""

    name = "AdaptivePooling"
    caffe_syntax = False
    passes_resize = True
    fresh_output = True
    torch_modules = ("torch.nn.AdaptiveAvgPool2d", "torch.nn.AdaptiveMaxPool2d")
    torch_functions = ("torch.nn.functional.adaptive_avg_pool2d",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) != 4:
            raise ShapeError(f"expects a 4-D input (N, C, H, W), got {shape}")
        size = layer.params["output_size"]
        return [(shape[0], shape[1], *(s if s is not None else shape[2 + i] for i, s in enumerate(size)))]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        cls = nn.AdaptiveMaxPool2d if layer.params["pool"] == "MAX" else nn.AdaptiveAvgPool2d
        return ModuleRecipe(cls, {"output_size": tuple(layer.params["output_size"])})

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0][2:]
        size = [s if s is not None else shape[i] for i, s in enumerate(layer.params["output_size"])]
        io = (list(layer.inputs), list(layer.outputs), layer.name)
        if size == [1, 1]:
            writer.node("GlobalMaxPool" if layer.params["pool"] == "MAX" else "GlobalAveragePool", *io)
        elif all(n % s == 0 for n, s in zip(shape, size)):  # equal windows: a plain pooling
            kernel = [n // s for n, s in zip(shape, size)]
            op = "MaxPool" if layer.params["pool"] == "MAX" else "AveragePool"
            writer.node(op, *io, kernel_shape=kernel, strides=kernel)
        elif layer.params["pool"] == "AVE":
            # Uneven (or overlapping) windows: average pooling is linear and separable,
            # so it is rows @ x @ cols exactly, with constant averaging matrices.
            cols = writer.const(f"{layer.name}.cols", average_matrix(shape[1], size[1]).T)
            rows = writer.const(f"{layer.name}.rows", average_matrix(shape[0], size[0]))
            pooled_w = f"{layer.name}/cols"
            writer.node("MatMul", [layer.inputs[0], cols], [pooled_w], pooled_w)
            writer.node("MatMul", [rows, pooled_w], list(layer.outputs), layer.name)
        else:
            raise unsupported_in_onnx(layer, "uneven adaptive max pooling has no ONNX operator")

    onnx_ops = ("MatMul",)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        """The two-MatMul form :meth:`to_onnx` writes for uneven windows: ``x @ cols``
        then ``rows @ that``, both constants equal to the averaging matrices."""
        cols_shape = reader.const_shape(node.input[1])  # shapes first: a MatMul is usually a weight
        source = reader.alias.get(node.input[0], node.input[0])
        if cols_shape is None or len(cols_shape) != 2 or not reader.net.has_blob(source):
            return None
        shape = reader.shape(source)
        readers = [n for n in reader.model.graph.node if node.output[0] in n.input]
        if (
            len(shape) != 4
            or len(readers) != 1
            or readers[0].op_type != "MatMul"
            or list(readers[0].input) != [readers[0].input[0], node.output[0]]
        ):
            return None
        rows_shape = reader.const_shape(readers[0].input[0])
        if rows_shape is None or len(rows_shape) != 2 or cols_shape[0] != shape[3] or rows_shape[1] != shape[2]:
            return None
        size = [int(rows_shape[0]), int(cols_shape[1])]
        cols, rows = reader.const(node.input[1]), reader.const(readers[0].input[0])
        if not (
            np.array_equal(cols, average_matrix(shape[3], size[1]).T)
            and np.array_equal(rows, average_matrix(shape[2], size[0]))
        ):
            return None
        return reader.layer(readers[0], self.name, {"pool": "AVE", "output_size": size}, inputs=[source])

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, nn.AdaptiveMaxPool2d) and module.return_indices:
            return None
        pool = "MAX" if isinstance(module, nn.AdaptiveMaxPool2d) else "AVE"
        return {"pool": pool, "output_size": _size(module.output_size)}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return {"pool": "AVE", "output_size": _size(size)}

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        shape = writer.in_shapes(layer)[0][2:]
        size = [s if s is not None else shape[i] for i, s in enumerate(layer.params["output_size"])]
        if size != [1, 1]:
            raise unsupported_in_caffe(layer, "only global adaptive pooling has a Caffe form")
        param = writer.layer(layer, "Pooling").pooling_param
        param.pool, param.global_pooling = (0 if layer.params["pool"] == "MAX" else 1), True


def _size(size: Any) -> list[int | None]:
    return [size, size] if isinstance(size, int) or size is None else list(size)


def average_matrix(size: int, out: int) -> np.ndarray:
    """The (out, size) matrix whose row i averages torch's adaptive window i:
    ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    matrix = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix
