"""How a decoded image or video frame becomes a net's input: one description, filled from
the source where the source says it, overridden field by field by the spec's
``source { preprocess { } }``, and written to the report, ``model.py``
(``PREPROCESSING``) and the ONNX metadata (``surgery.preprocessing``).

The transform: resize (shorter side, or height x width), centre crop, channel order,
then per channel ``input = (pixel - mean) / std * scale`` with pixels in 0-255. Caffe's
``transform_param`` is exactly that (std 1); torchvision's ``Normalize`` after
``ToTensor`` is ``mean * 255`` and ``std * 255`` with scale 1.

numpy only: the front door (``inspect``/``plan``) imports this without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surgery.errors import ShapeError, SpecError

CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
INTERPOLATIONS = ("BILINEAR", "NEAREST", "BICUBIC", "AREA")


@dataclass(frozen=True)
class Preprocess:
    """The input transform of a net (see the module docstring for its meaning)."""

    channel_order: str = "RGB"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    #: () none; (s,) the shorter side becomes s; (h, w) exactly
    resize: tuple[int, ...] = ()
    #: () none; (s,) square; (h, w)
    crop: tuple[int, ...] = ()
    interpolation: str = "BILINEAR"
    #: where an odd margin of the centre crop goes: ``round``, torchvision's CenterCrop
    #: (``int(round(margin / 2))``, which timm and transformers use too), or ``floor``,
    #: Caffe's test-phase crop (``margin / 2`` in integers)
    crop_offset: str = "round"
    #: field -> who said it ("caffe transform_param", "torchvision IMAGENET1K_V1", "spec", "default")
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON), as the report and the emitted files carry them."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std", "resize", "crop"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        """The inverse of :meth:`to_dict` (e.g. ``model.PREPROCESSING``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kept: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**kept)

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` with ``input = pixel * a + b`` per channel, float32 arrays of ``channels``."""
        mean, std = (_per_channel(v, channels, name) for v, name in ((self.mean, "mean"), (self.std, "std")))
        a = self.scale / std
        return a.astype(np.float32), (-mean * a).astype(np.float32)

    def check_net_input(self, shape: tuple[int, ...]) -> None:
        """Refuse a transform that cannot make the net's input ``(N, C, H, W)``."""
        if len(shape) != 4:
            raise ShapeError(f"preprocessing needs an image input (N, C, H, W); the net's input is {list(shape)}")
        channels, size = shape[1], tuple(shape[2:])
        wanted = 1 if self.channel_order == "GRAY" else 3
        if channels != wanted:
            raise SpecError(
                f"channel_order {self.channel_order} makes {wanted} channels; the net's input has {channels}",
                fix="set preprocess { channel_order: " + ("GRAY" if channels == 1 else "RGB") + " }",
            )
        for values, name in ((self.mean, "mean"), (self.std, "std"), ((self.scale,), "scale")):
            if not all(math.isfinite(v) for v in values):  # from a file: data, checked as such
                raise SpecError(f"preprocess {name} {list(values)} is not a finite number", fix="give finite values")
        for values, name in ((self.mean, "mean"), (self.std, "std")):
            _per_channel(values, channels, name)
        if self.crop and _pair(self.crop) != size:
            raise SpecError(
                f"crop {list(self.crop)} does not make the net's input size {list(size)}",
                fix=f"set preprocess {{ crop: {size[0]} }} or the source's input_shape",
            )

    def fitted_to(self, size: tuple[int, int]) -> Preprocess:
        """The same transform at another input size (a source's crop of 224 for a net
        built at 112): the crop becomes ``size`` and the resize scales with it."""
        if not self.crop or _pair(self.crop) == size:
            return self
        crop = _pair(self.crop)
        ratio = size[0] / crop[0]
        resize = tuple(max(1, round(v * ratio)) for v in self.resize)
        origin = dict(self.origin)
        origin.update(crop="input_shape", **({"resize": "input_shape"} if resize else {}))
        return dataclasses.replace(self, crop=size if size[0] != size[1] else size[:1], resize=resize, origin=origin)

    def output_size(self, frame_hw: tuple[int, int], net_hw: tuple[int, int]) -> tuple[int, int]:
        """The size frames are decoded to (before the crop)."""
        if len(self.resize) == 2:
            return int(self.resize[0]), int(self.resize[1])
        if len(self.resize) == 1:
            short = int(self.resize[0])
            h, w = frame_hw
            # torchvision's Resize(int): the shorter side becomes `short`, the other truncated
            return (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        if self.crop:
            return frame_hw  # crop the frame as decoded (Caffe's data layers)
        return net_hw

    def crop_start(self, margin: int) -> int:
        """The first row (or column) a centre crop keeps out of ``margin`` extra ones."""
        return margin // 2 if self.crop_offset == "floor" else round(margin / 2.0)

    def finish(self, pixels: np.ndarray, net_hw: tuple[int, int]) -> np.ndarray:
        """``(..., H', W', C)`` uint8 at :meth:`output_size` -> float32 ``(..., C, H, W)``."""
        height, width = pixels.shape[-3], pixels.shape[-2]
        if (height, width) != net_hw:
            top, left = self.crop_start(height - net_hw[0]), self.crop_start(width - net_hw[1])
            if top < 0 or left < 0:
                raise ShapeError(f"frames of {height}x{width} are smaller than the crop {net_hw[0]}x{net_hw[1]}")
            pixels = pixels[..., top : top + net_hw[0], left : left + net_hw[1], :]
        a, b = self.per_channel(pixels.shape[-1])
        out = pixels.astype(np.float32) * a + b
        return np.ascontiguousarray(np.moveaxis(out, -1, -3))


def describe(values: dict[str, Any]) -> str:
    """One line for people: ``resize 256; centre crop 224; RGB; (pixel - [...]) / [...] * 1``."""

    def numbers(items: list) -> str:
        return ", ".join(f"{v:g}" for v in items)

    steps = [
        f"resize {numbers(values['resize'])}" if values["resize"] else "",
        f"centre crop {numbers(values['crop'])}" if values["crop"] else "",
        values["channel_order"],
        f"(pixel - [{numbers(values['mean'])}]) / [{numbers(values['std'])}] * {values['scale']:g}",
    ]
    origin = ", ".join(f"{k}: {v}" if k != "*" else v for k, v in values.get("origin", {}).items())
    return "; ".join(step for step in steps if step) + (f" ({origin})" if origin else "")


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    return (int(values[0]), int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.size == 1:
        return np.repeat(array, channels)
    if array.size != channels:
        raise SpecError(
            f"preprocess {name} has {array.size} values for {channels} channels", fix="give one per channel"
        )
    return array


def default(channels: int) -> Preprocess:
    """Nothing stated anywhere: pixels to [0, 1], in the net's channels, at its size."""
    return Preprocess(channel_order="GRAY" if channels == 1 else "RGB", scale=1 / 255, origin={"*": "default"})


def stated(message: Any, base: Preprocess | None, channels: int) -> Preprocess:
    """The spec's ``preprocess { }`` over ``base`` (the source's, or the identity
    transform when the source says nothing), field by field."""
    start = base or Preprocess(channel_order="GRAY" if channels == 1 else "RGB", origin={"*": "spec"})
    changes: dict[str, Any] = {}
    if message.HasField("channel_order"):
        changes["channel_order"] = CHANNEL_ORDERS[message.channel_order]
    if message.HasField("interpolation"):
        changes["interpolation"] = INTERPOLATIONS[message.interpolation]
    if message.HasField("scale"):
        changes["scale"] = float(message.scale)
    for name in ("mean", "std", "resize", "crop"):
        values = list(getattr(message, name))
        if values:
            if name in ("resize", "crop") and len(values) > 2:
                raise SpecError(f"preprocess {name} takes one value or two (height, width), not {len(values)}")
            if name == "std" and any(v == 0 for v in values):
                raise SpecError("preprocess std has a zero", fix="std divides: give the pixel spread, e.g. 58.395")
            changes[name] = tuple(float(v) if name in ("mean", "std") else int(v) for v in values)
    origin = dict(start.origin)
    if base is not None:  # which fields the spec changed of what the source said
        origin.update(dict.fromkeys(changes, "spec"))
    return dataclasses.replace(start, **changes, origin=origin)


def from_caffe_transform(transform: Any, read_mean_file: Any = None) -> Preprocess | None:
    """A Caffe data layer's ``transform_param`` (the TEST phase's): BGR (or GRAY with
    force_gray), mean_value or mean_file, scale, crop_size. None when it says nothing."""
    fields = {f.name for f, _ in transform.ListFields()} - {"mirror"}
    if not fields:
        return None
    order = "GRAY" if transform.force_gray else "BGR"
    mean: tuple[float, ...] = tuple(float(v) for v in transform.mean_value) or (0.0,)
    note = "caffe transform_param"
    if transform.mean_file and read_mean_file is not None:
        mean = tuple(float(v) for v in read_mean_file(transform.mean_file))
        note = "caffe transform_param (mean_file as per-channel means)"
    crop = (int(transform.crop_size),) if transform.crop_size else ()
    return Preprocess(
        channel_order=order,
        mean=mean,
        scale=float(transform.scale) if transform.HasField("scale") else 1.0,
        crop=crop,
        crop_offset="floor",
        origin={"*": note},
    )


def from_torchvision(transform: dict[str, Any], name: str) -> Preprocess | None:
    """torchvision weights' ``transforms()`` values (as :mod:`surgery.importers.pretrained`
    records them): ``ToTensor`` then ``Normalize`` in pixel units."""
    if "mean" not in transform or "std" not in transform:
        return None
    resize = transform.get("resize_size") or []
    crop = transform.get("crop_size") or []
    return Preprocess(
        channel_order="RGB",
        mean=tuple(round(float(m) * 255, 6) for m in transform["mean"]),
        std=tuple(round(float(s) * 255, 6) for s in transform["std"]),
        resize=tuple(int(v) for v in resize),
        crop=tuple(int(v) for v in crop),
        interpolation=str(transform.get("interpolation", "bilinear")).upper(),
        origin={"*": f"torchvision {name}"},
    )


#: PIL's resampling codes, as Hugging Face image processors store them
_PIL_RESAMPLE = {0: "NEAREST", 2: "BILINEAR", 3: "BICUBIC", 4: "AREA"}


def from_hf_processor(values: dict[str, Any], name: str) -> Preprocess | None:
    """A Hugging Face image processor's ``preprocessor_config.json``: resize (``size``'s
    height and width, or its shortest edge, widened by ``crop_pct`` where ConvNeXt's
    processor does), centre crop, rescale, then normalize, in pixel units. None for a
    processor that does neither rescale nor normalize (nothing to say)."""
    rescale = float(values.get("rescale_factor", 1 / 255)) if values.get("do_rescale", True) else 1.0
    normalize = values.get("do_normalize", True)
    mean = [float(m) for m in values.get("image_mean") or [0.0]] if normalize else [0.0]
    std = [float(s) for s in values.get("image_std") or [1.0]] if normalize else [1.0]
    if rescale == 1.0 and not normalize:
        return None
    size = values.get("size") or {}
    resize: tuple[int, ...] = ()
    crop: tuple[int, ...] = ()
    if values.get("do_resize", True) and isinstance(size, dict):
        if "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            crop_pct = values.get("crop_pct")
            if crop_pct is not None and edge < 384:  # ConvNeXt's processor: resize wider, crop the edge
                resize, crop = (int(edge / float(crop_pct)),), (edge, edge)
            else:
                resize = (edge,) if crop_pct is None else (edge, edge)
    crop_size = values.get("crop_size")
    if values.get("do_center_crop") and isinstance(crop_size, dict) and "height" in crop_size:
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    return Preprocess(
        channel_order="RGB",
        mean=tuple(round(m / rescale, 6) for m in mean),
        std=tuple(round(s / rescale, 6) for s in std),
        resize=resize,
        crop=crop,
        interpolation=_PIL_RESAMPLE.get(int(values.get("resample", 2)), "BILINEAR"),
        origin={"*": f"Hugging Face {name} preprocessor_config.json"},
    )


def raw_pixels(channels: int, why: str) -> Preprocess:
    """The net takes pixels as decoded (0-255) and scales them itself (a Keras Rescaling
    or Normalization at its input)."""
    return Preprocess(channel_order="GRAY" if channels == 1 else "RGB", origin={"*": why})


__all__ = ["CHANNEL_ORDERS", "INTERPOLATIONS", "Preprocess", "default", "stated"]
