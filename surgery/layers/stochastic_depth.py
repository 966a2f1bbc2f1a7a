"""StochasticDepth: a residual branch dropped per sample (or for the whole batch) while
training, the identity in eval (torchvision's ``stochastic_depth``, in every
EfficientNet, ConvNeXt, Swin and MaxViT block). Caffe has no such layer."""

from __future__ import annotations

import sys
from typing import Any

from surgery.ir import Layer, Shape
from surgery.layers.opaque_call import TRAINING
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, register_layer


def _torchvision_stochastic_depth() -> Any:
    """torchvision's function, when torchvision.ops is loaded: a model that calls it has
    imported it, and importing it here would cost seconds that no other model (nor a
    command reading an ONNX file) should pay."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    return getattr(module, "stochastic_depth", None)


MODES = ("row", "batch")


@register_layer
class StochasticDepth(LayerType):
    """Params: p (the probability of dropping), mode ("row": per sample, "batch": all)."""

    name = "StochasticDepth"
    caffe_syntax = False
    passes_resize = True

    @property
    def torch_functions(self) -> tuple[Any, ...]:  # type: ignore[override]
        function = _torchvision_stochastic_depth()
        return (function,) if function else ()

    reads_mode_flags = True

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 1)
        p, mode = layer.params.get("p"), layer.params.get("mode")
        check_param(isinstance(p, float) and 0.0 <= p <= 1.0, f"p must be a probability in [0, 1], got {p!r}")
        check_param(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return [in_shapes[0]]

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        from surgery.layers import runtime  # torch's modules: imported for torch work only

        return ModuleRecipe(runtime.StochasticDepth, {"p": layer.params["p"], "mode": layer.params["mode"]})

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        """``stochastic_depth(x, p, mode, self.training)``: taken only when the call follows
        the model's mode (a call forced on or off stays the call it was)."""
        names = ("input", "p", "mode", "training")
        values = dict(zip(names, args)) | kwargs
        p, mode = values.get("p"), values.get("mode")
        if (
            values.get("training") is not TRAINING
            or not isinstance(p, (int, float))
            or isinstance(p, bool)
            or not 0.0 <= p <= 1.0
            or mode not in MODES
        ):
            return None
        return {"p": float(p), "mode": mode}

    onnx_ops = ()

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        # A deploy graph: stochastic depth is the identity at inference.
        writer.node("Identity", list(layer.inputs), list(layer.outputs), layer.name)
