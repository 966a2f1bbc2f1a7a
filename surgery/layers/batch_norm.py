"""BatchNorm: normalisation by running statistics, optionally with torch's affine
scale and shift (Caffe expresses those as a following Scale layer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.registry import LayerType, ModuleRecipe, known, register_layer
from surgery.lazy_torch import nn


@register_layer
class BatchNorm(LayerType):
    """Params: eps, momentum (torch's: new = (1-m) old + m batch), affine,
    use_global_stats (True = frozen statistics, also while training; None = batch
    statistics in train mode, running ones in eval, as torch does).
    Blobs: running_mean [C], running_var [C], weight [C] and bias [C] when affine,
    num_batches_tracked (a torch buffer, kept so state_dicts round-trip)."""

    name = "BatchNorm"
    passes_resize = True
    fresh_output = True
    torch_modules = ("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d")
    blob_roles = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        shape = in_shapes[0]
        if shape is None or len(shape) not in (2, 3, 4, 5):
            raise ShapeError(f"expects a 2-D to 5-D input (N, C, ...), got {shape}")
        mean = layer.blobs.get("running_mean")
        if mean is not None and mean.shape[0] != shape[1]:
            raise ShapeError(f"has statistics for {mean.shape[0]} channels, the input has {shape[1]}")
        return [shape]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        channels = known(layer, in_shapes)[1]
        shapes: dict[str, Shape] = {"running_mean": (channels,), "running_var": (channels,)}
        if layer.params.get("affine", True):
            shapes = {"weight": (channels,), "bias": (channels,)} | shapes
        return shapes

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        value = 1.0 if role in ("weight", "running_var") else 0.0
        return {"type": "constant", "value": value}  # the identity transform

    def trainable_roles(self, layer: Layer) -> tuple[str, ...]:
        return tuple(role for role in ("weight", "bias") if role in layer.blobs)

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers.runtime import (  # torch's modules: imported for torch work only
            FrozenBatchNorm1d,
            FrozenBatchNorm2d,
            FrozenBatchNorm3d,
        )

        p = layer.params
        rank = len(known(layer, in_shapes))
        frozen = bool(p.get("use_global_stats"))
        cls: type[nn.Module]
        if rank == 5:
            cls = FrozenBatchNorm3d if frozen else nn.BatchNorm3d
        elif rank == 4:
            cls = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        else:
            cls = FrozenBatchNorm1d if frozen else nn.BatchNorm1d
        return ModuleRecipe(
            cls,
            {
                "num_features": known(layer, in_shapes)[1],
                "eps": p.get("eps", 1e-5),
                "momentum": p.get("momentum", 0.1),
                "affine": "weight" in layer.blobs,
            },
        )

    def import_torch_module(self, module: nn.Module) -> dict[str, Any] | None:
        if not module.track_running_stats:
            return None
        return {"eps": module.eps, "momentum": module.momentum, "affine": module.affine, "use_global_stats": None}

    torch_functionals = ("torch.nn.functional.batch_norm",)

    def import_torch_functional(
        self, target: Any, args: tuple, kwargs: dict, module: nn.Module
    ) -> dict[str, Any] | None:
        """``F.batch_norm`` on a BatchNorm subclass's own statistics (timm's BatchNormAct2d)."""
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
            return None
        values = (
            dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"), args))
            | kwargs
        )
        momentum = values.get("momentum", module.momentum)
        return {
            "eps": float(values.get("eps", module.eps)),
            "momentum": momentum if momentum is not None else 0.1,
            "affine": module.affine,
            "use_global_stats": None,
        }

    onnx_ops = ("BatchNormalization",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        channels = layer.blobs["running_mean"].shape[0]
        scale = (
            writer.weight(layer, "weight")
            if "weight" in layer.blobs
            else writer.weight(layer, "weight", np.ones(channels, np.float32))
        )
        bias = (
            writer.weight(layer, "bias")
            if "bias" in layer.blobs
            else writer.weight(layer, "bias", np.zeros(channels, np.float32))
        )
        inputs = [
            layer.inputs[0],
            scale,
            bias,
            writer.weight(layer, "running_mean"),
            writer.weight(layer, "running_var"),
        ]
        writer.node(
            "BatchNormalization", inputs, list(layer.outputs), layer.name, epsilon=float(layer.params.get("eps", 1e-5))
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        if any(reader.const_shape(name) is None for name in node.input[1:5]):
            return None
        attrs = reader.attrs(node)
        blobs = {
            "weight": reader.param(node.input[1]),
            "bias": reader.param(node.input[2]),
            "running_mean": reader.param(node.input[3], trainable=False),
            "running_var": reader.param(node.input[4], trainable=False),
        }
        params = {
            "eps": float(attrs.get("epsilon", 1e-5)),
            "momentum": 1.0 - float(attrs.get("momentum", 0.9)),
            "affine": True,
            "use_global_stats": None,
        }
        return reader.layer(
            node, self.name, params, inputs=[reader.blob(node.input[0])], blobs=blobs, outputs=node.output[:1]
        )

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        """Caffe's BatchNorm (statistics, factor 1) plus a Scale for torch's affine part."""
        import torch

        affine = "weight" in layer.blobs
        middle = f"{layer.name}/normalized" if affine else layer.outputs[0]
        message = writer.layer(layer, "BatchNorm", top=[middle])
        message.batch_norm_param.eps = float(layer.params.get("eps", 1e-5))
        message.batch_norm_param.use_global_stats = True
        for role in ("running_mean", "running_var"):
            writer.blob(message, layer.blobs[role].data, 0.0, 0.0)
        writer.blob(message, torch.ones(1), 0.0, 0.0)
        if affine:
            scale = writer.layer(layer, "Scale", name=f"{layer.name}/scale", bottom=[middle])
            scale.scale_param.bias_term = True
            writer.blobs(scale, layer, ("weight", "bias"))

    caffe_param_field = "batch_norm_param"

    def from_caffe(self, param: Any) -> dict[str, Any]:
        # Caffe's BatchNorm has no affine part (a Scale layer follows) and its running
        # averages move by 1 - moving_average_fraction per step.
        return {
            "eps": param.eps,
            "momentum": 1.0 - param.moving_average_fraction,
            "affine": False,
            "use_global_stats": param.use_global_stats if param.HasField("use_global_stats") else None,
        }
