"""Softmax over one axis (Caffe's default: the channel axis 1); with ``log``, its
logarithm (torch's log_softmax, ONNX's LogSoftmax; Caffe has no such layer)."""

from __future__ import annotations

from typing import Any

from surgery.errors import unsupported_in_caffe
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, check_axis, register_layer
from surgery.lazy_torch import F, nn, torch


@register_layer
class Softmax(LayerType):
    """Params: axis, log (the logarithm of the softmax; absent means False)."""

    name = "Softmax"
    passes_resize = True
    torch_modules = ("torch.nn.Softmax", "torch.nn.LogSoftmax")
    torch_functions = (
        "torch.nn.functional.softmax",
        "torch.softmax",
        "softmax",
        "torch.nn.functional.log_softmax",
        "torch.log_softmax",
        "log_softmax",
    )

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        check_axis(layer.params.get("axis", 1), in_shapes[0])
        return [in_shapes[0]]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        cls = nn.LogSoftmax if layer.params.get("log") else nn.Softmax
        return ModuleRecipe(cls, {"dim": layer.params.get("axis", 1)})

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        dim = getattr(module, "dim", None)
        return None if dim is None else _params(dim, isinstance(module, nn.LogSoftmax))

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(dim, int) or kwargs.get("dtype") is not None:
            return None
        return _params(dim, target in (F.log_softmax, torch.log_softmax, "log_softmax"))

    onnx_ops = ("Softmax", "LogSoftmax")

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        op = "LogSoftmax" if layer.params.get("log") else "Softmax"
        writer.node(op, list(layer.inputs), list(layer.outputs), layer.name, axis=layer.params.get("axis", 1))

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        source = reader.blob(node.input[0])
        axis = reader.attrs(node).get("axis", 1 if reader.opset < 13 else -1)
        shape = reader.shape(source)
        axis %= len(shape)
        params = _params(axis, node.op_type == "LogSoftmax")
        if reader.opset >= 13 or axis == len(shape) - 1 or all(d == 1 for d in shape[axis + 1 :]):
            return reader.layer(node, self.name, params, inputs=[source])
        if axis == 0:
            return None  # one softmax over the whole batch
        # Before opset 13 a Softmax flattens the axes from `axis` on and normalises over them.
        name = reader.node_name(node)
        flat = reader.add(
            Layer(
                reader.unique(f"{name}/flatten"),
                "Flatten",
                inputs=[source],
                outputs=[f"{node.output[0]}/flat"],
                params={"axis": axis, "end_axis": -1},
            )
        )
        normed = reader.add(
            Layer(
                reader.unique(f"{name}/softmax"),
                self.name,
                inputs=flat.outputs,
                outputs=[f"{node.output[0]}/normed"],
                params=params,
            )
        )
        return reader.layer(node, "Reshape", {"shape": [0, *shape[1:]]}, inputs=normed.outputs)

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        if layer.params.get("log"):
            raise unsupported_in_caffe(layer, "Caffe has no log-softmax layer")
        writer.layer(layer, "Softmax").softmax_param.axis = layer.params.get("axis", 1)

    caffe_param_field = "softmax_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        return {"axis": param.axis}


def _params(axis: int, log: bool) -> dict[str, Any]:
    """A Softmax layer's params (``log`` only when set: plain softmaxes keep their old form)."""
    return {"axis": axis, "log": True} if log else {"axis": axis}
