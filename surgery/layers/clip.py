"""Clip: clamp to [min, max] (ReLU6, ONNX Clip, torch Hardtanh)."""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, register_layer
from surgery.lazy_torch import fx, nn, torch


@register_layer
class Clip(LayerType):
    """Params: min, max (None = unbounded on that side)."""

    name = "Clip"
    caffe_syntax = False
    passes_resize = True
    torch_modules = ("torch.nn.ReLU6", "torch.nn.Hardtanh")
    onnx_ops = ("Clip",)

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        return graph.call_function(torch.clamp, (inputs[0],), {"min": layer.params["min"], "max": layer.params["max"]})

    def import_torch_module(self, module: nn.Hardtanh) -> dict[str, Any]:
        return {"min": float(module.min_val), "max": float(module.max_val)}

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        import numpy as np

        inputs = [layer.inputs[0]]
        for bound in ("min", "max"):
            value = layer.params[bound]
            inputs.append("" if value is None else writer.const(f"{layer.name}.{bound}", np.array(value, np.float32)))
        while inputs[-1] == "":
            inputs.pop()
        writer.node("Clip", inputs, list(layer.outputs), layer.name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        bounds = {"min": attrs.get("min"), "max": attrs.get("max")}
        for index, bound in ((1, "min"), (2, "max")):
            if len(node.input) > index and node.input[index]:
                values = reader.const_list(node.input[index])
                if values is None:
                    return None
                bounds[bound] = float(values[0])
        return reader.layer(node, self.name, bounds, inputs=[reader.blob(node.input[0])])
