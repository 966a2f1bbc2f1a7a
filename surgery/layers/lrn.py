"""LRN: local response normalisation across channels (Caffe's, torch's, ONNX's)."""

from __future__ import annotations

from typing import Any

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, register_layer
from surgery.lazy_torch import nn
from surgery.protos import enum_name


@register_layer
class LRN(LayerType):
    """Params: local_size, alpha, beta, k, norm_region ("ACROSS_CHANNELS").
    ``y = x / (k + alpha/size * sum of x^2 over size neighbouring channels)^beta``."""

    name = "LRN"
    passes_resize = True
    torch_modules = ("torch.nn.LocalResponseNorm",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        if layer.params["local_size"] % 2 == 0:
            raise ShapeError(f"local_size must be odd, got {layer.params['local_size']}")
        return [in_shapes[0]]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers.runtime import WithinChannelLRN  # torch's modules: imported for torch work only

        p = layer.params
        if p.get("norm_region", "ACROSS_CHANNELS") == "WITHIN_CHANNEL":
            return ModuleRecipe(WithinChannelLRN, {"size": p["local_size"], "alpha": p["alpha"], "beta": p["beta"]})
        return ModuleRecipe(
            nn.LocalResponseNorm, {"size": p["local_size"], "alpha": p["alpha"], "beta": p["beta"], "k": p["k"]}
        )

    def import_torch_module(self, module: nn.LocalResponseNorm) -> dict[str, Any]:
        return {
            "local_size": module.size,
            "alpha": module.alpha,
            "beta": module.beta,
            "k": module.k,
            "norm_region": "ACROSS_CHANNELS",
        }

    onnx_ops = ("LRN",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        if p.get("norm_region", "ACROSS_CHANNELS") == "WITHIN_CHANNEL":
            self._within_channel_onnx(layer, writer)
            return
        writer.node(
            "LRN",
            list(layer.inputs),
            list(layer.outputs),
            layer.name,
            size=p["local_size"],
            alpha=float(p["alpha"]),
            beta=float(p["beta"]),
            bias=float(p["k"]),
        )

    @staticmethod
    def _within_channel_onnx(layer: Layer, writer: Any) -> None:
        """x * (1 + alpha * avgpool(x^2))^-beta, as Caffe computes WITHIN_CHANNEL."""
        import numpy as np

        p, name, x = layer.params, layer.name, layer.inputs[0]
        pad = (p["local_size"] - 1) // 2
        const = lambda role, v: writer.const(f"{name}.{role}", np.array(v, dtype=np.float32))  # noqa: E731
        writer.node("Mul", [x, x], [f"{name}/sq"], f"{name}/sq")
        writer.node(
            "AveragePool",
            [f"{name}/sq"],
            [f"{name}/mean"],
            f"{name}/mean",
            kernel_shape=[p["local_size"]] * 2,
            pads=[pad] * 4,
            count_include_pad=1,
        )
        writer.node("Mul", [f"{name}/mean", const("alpha", p["alpha"])], [f"{name}/scaled"], f"{name}/scaled")
        writer.node("Add", [f"{name}/scaled", const("one", 1.0)], [f"{name}/base"], f"{name}/base")
        writer.node("Pow", [f"{name}/base", const("beta", -p["beta"])], [f"{name}/norm"], f"{name}/norm")
        writer.node("Mul", [x, f"{name}/norm"], list(layer.outputs), name)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        a = reader.attrs(node)
        return reader.layer(
            node,
            self.name,
            {
                "local_size": a["size"],
                "alpha": a.get("alpha", 1e-4),
                "beta": a.get("beta", 0.75),
                "k": a.get("bias", 1.0),
                "norm_region": "ACROSS_CHANNELS",
            },
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        param = writer.layer(layer, "LRN").lrn_param
        param.local_size, param.alpha, param.beta, param.k = p["local_size"], p["alpha"], p["beta"], p["k"]
        param.norm_region = 1 if p.get("norm_region") == "WITHIN_CHANNEL" else 0

    caffe_param_field = "lrn_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        region = enum_name(param, "norm_region")
        return {
            "local_size": param.local_size,
            "alpha": param.alpha,
            "beta": param.beta,
            "k": param.k,
            "norm_region": region,
        }
