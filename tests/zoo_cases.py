"""The model zoo run: every torchvision classifier up to 150M parameters (image and video)
and a list of timm models, each through load -> classifier resize -> torch + ONNX -> verify.

`run_case` does one model and returns a row (what passed, where it stopped, why);
tests/test_zoo_models.py runs it for every case and writes the rows as JSON, and
tools/zoo_table.py turns that JSON into the README's table.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

MAX_PARAMS = 150_000_000
NUM_OUTPUT = 7


@dataclass(frozen=True)
class Case:
    """One model: its factory, the input it runs at, and (when it cannot go through)
    the stage it is expected to stop at and why."""

    family: str  # "torchvision", "torchvision.video" or "timm"
    name: str
    size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)
    refusal: str | None = None  # "stage: start of the error" when the model is expected to be refused
    frames: int = 0  # a video model's clip length: its input is (1, 3, frames, size, size)
    classes: int = 1000  # the pretrained head's outputs (Kinetics-400 for the video models)

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 3, self.frames, self.size, self.size) if self.frames else (1, 3, self.size, self.size)

    @property
    def input_label(self) -> str:
        return f"{self.frames}x{self.size}" if self.frames else str(self.size)


# Inputs are as small as each model allows (32x32 for most torchvision models, 64x64 for
# timm's), so the whole zoo runs in minutes (inception_v3's
# train-mode auxiliary head needs the full 299; maxvit's windows need 224).
_TORCHVISION_SIZES = {"inception_v3": 299, "alexnet": 64, "maxvit_t": 224}
_TORCHVISION_KWARGS = {
    "vit_b_16": {"image_size": 32},
    "vit_b_32": {"image_size": 32},
    "inception_v3": {"init_weights": False},
    "googlenet": {"init_weights": False},
}
_TORCHVISION_REFUSALS: dict[str, str] = {}

TIMM_MODELS = [
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "convnext_tiny",
    "regnety_008",
    "densenet121",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "inception_v3",
    "xception41",
    "mixnet_s",
    "ghostnet_100",
    "repvgg_a2",
    "resnest14d",
    "efficientnetv2_rw_t",
    "levit_128",
    "coat_lite_tiny",
    "mobilevit_s",
    "edgenext_small",
]
_TIMM_SIZES = {"inception_v3": 75, "xception41": 64, "levit_128": 224, "coat_lite_tiny": 64}
_TIMM_KWARGS = {
    "coat_lite_tiny": {"img_size": 64},
    "vit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_patch16_224": {"img_size": 64},
    "swin_tiny_patch4_window7_224": {"img_size": 64, "window_size": 2},
}
#: timm models surgery refuses, with why (mobilevit_s, which fx cannot trace, goes through torch.export)
_TIMM_REFUSALS: dict[str, str] = {}


def torchvision_cases() -> list[Case]:
    """Every torchvision classification model with at most MAX_PARAMS parameters (the
    count from its weights' metadata: nothing is downloaded)."""
    import torchvision

    cases = []
    for name in torchvision.models.list_models(module=torchvision.models):
        params = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
        if params <= MAX_PARAMS:
            cases.append(
                Case(
                    "torchvision",
                    name,
                    _TORCHVISION_SIZES.get(name, 32),
                    _TORCHVISION_KWARGS.get(name, {}),
                    _TORCHVISION_REFUSALS.get(name),
                )
            )
    return cases


# Video models: (frames, size) as small as each allows (S3D's last pooling is 2x7x7 and
# MViT's patch grid is fixed at 16x224x224).
_VIDEO_INPUTS = {"s3d": (16, 224), "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224)}
_VIDEO_REFUSALS: dict[str, str] = {}


def video_cases() -> list[Case]:
    """Every torchvision video classification model with at most MAX_PARAMS parameters."""
    import torchvision

    cases = []
    for name in torchvision.models.list_models(module=torchvision.models.video):
        if torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"] <= MAX_PARAMS:
            frames, size = _VIDEO_INPUTS.get(name, (8, 32 if "swin" not in name else 64))
            cases.append(
                Case("torchvision.video", name, size, {}, _VIDEO_REFUSALS.get(name), frames=frames, classes=400)
            )
    return cases


def timm_cases() -> list[Case]:
    return [
        Case("timm", name, _TIMM_SIZES.get(name, 64), _TIMM_KWARGS.get(name, {}), _TIMM_REFUSALS.get(name))
        for name in TIMM_MODELS
    ]


def build(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    if case.family.startswith("torchvision"):
        import torchvision

        model = torchvision.models.get_model(case.name, **case.kwargs)
    else:
        import timm

        model = timm.create_model(case.name, pretrained=False, **case.kwargs)
    return model.eval()


def classifier_layers(net: Any, classes: int = 1000) -> list[str]:
    """The layers with weights that make the ``classes`` logits with no such layer after
    them (one head, or a distilled model's two)."""
    weighted = {layer.name for layer in net.layers() if layer.type in ("InnerProduct", "Convolution")}
    heads = [
        name
        for name in weighted
        if net.layer(name).params.get("num_output") == classes and not (net.descendants(name) & weighted)
    ]
    if not heads:
        raise LookupError(f"no InnerProduct/Convolution with {classes} outputs")
    return sorted(heads)


def run_case(case: Case) -> dict[str, Any]:
    """load -> classifier resize -> emitted torch + ONNX -> verify, one model. Never raises:
    the row says where it stopped (``stage``) and the first line of the error."""
    import surgery
    from surgery.errors import SurgeryError
    from surgery.verify import verify

    row: dict[str, Any] = {
        "id": case.id,
        "family": case.family,
        "model": case.name,
        "input": case.input_label,
        "stage": "build",
        "ok": False,
        "error": None,
        "traceback": False,
    }
    started = time.perf_counter()
    try:
        model = build(case)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["stage"] = "load"
        source = surgery.load(model, case.input_shape, name=case.name)
        row["layers"] = len(source)
        row["opaque"] = sorted({layer.name for layer in source.layers() if layer.type in ("Opaque", "OpaqueCall")})
        row["stage"] = "classifier"
        edited = source.copy()
        heads = classifier_layers(edited, case.classes)
        row["head"] = ", ".join(heads)
        surgery.classifier(edited, heads, num_output=NUM_OUTPUT, seed=1)
        row["stage"] = "verify"
        result = verify(source, edited, seed=0)
        worst = max(result.comparisons, key=lambda c: c.max_rel)
        row["max_abs"], row["max_rel"] = worst.max_abs, worst.max_rel
        if not result.ok:
            failed = [c for c in result.comparisons if not c.ok]
            row["error"] = f"{failed[0].what} {failed[0].blob}: max abs {failed[0].max_abs:.3g}"
        else:
            row["stage"], row["ok"] = "done", True
    except SurgeryError as error:
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001  (a traceback is what the zoo exists to find)
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        row["traceback"] = traceback.format_exc(limit=-4)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row
