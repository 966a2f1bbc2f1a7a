"""Clips from files: video files decoded with PyAV (FFmpeg's codecs in its wheel, no
system ffmpeg), folders of images as one clip each, and ``.npy`` arrays of frames.

Frames are sampled (``T`` uniformly, a stride, or all), decoded one at a time straight to
the size preprocessing asks for (FFmpeg's scaler does the resize and the colour
conversion) and handed on in batches, so memory is bounded by a batch of frames whatever
the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import SurgeryError
from surgery.preprocess import Preprocess

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: The state folder ``surgery features`` keeps in its output folder (see feature_cache).
FEATURES_STATE = ".surgery-features"
PAD_RULES = ("last", "loop", "stretch", "refuse")
_FORMATS = {"RGB": "rgb24", "BGR": "bgr24", "GRAY": "gray"}
_INTERPOLATION = {"BILINEAR": "BILINEAR", "NEAREST": "POINT", "BICUBIC": "BICUBIC", "AREA": "AREA"}


class ClipError(SurgeryError):
    """One clip cannot be read; the run names it and goes on with the others."""


def av_module() -> Any:
    """PyAV, or an error that says how to install it."""
    try:
        import av
    except ImportError:
        raise SurgeryError(
            "reading video files needs PyAV", fix="pip install 'surgery-nets[video]' (PyAV's wheel carries FFmpeg)"
        ) from None
    return av


@dataclass(frozen=True)
class Clip:
    """One clip: a video file, a folder of images, or a ``.npy`` array ``(T, C, H, W)``."""

    path: Path
    kind: str  # "video" | "images" | "npy"
    #: its path under the clips folder, without the suffix: the output is ``<name>.npy``
    name: str


def find_clips(folder: str | Path, skip: Path | None = None) -> list[Clip]:
    """Every clip under ``folder`` (recursively), sorted by name: the order every worker
    agrees on; ``skip``: a folder inside it to pass over (the features written there).
    Raises when there is none, or when two clips would write the same output."""
    root = Path(folder)
    if not root.is_dir():
        raise SurgeryError(f"clips folder {str(root)!r} does not exist", fix="give the folder holding the videos")
    skipped = [skip.resolve()] if skip is not None else []
    # A folder features were written to (it holds their state folder) is output, never clips.
    skipped += [marker.parent.resolve() for marker in root.rglob(FEATURES_STATE) if marker.is_dir()]
    clips: list[Clip] = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if any(path.resolve() == folder or folder in path.resolve().parents for folder in skipped):
            continue
        name = path.relative_to(root).with_suffix("").as_posix()
        suffix = path.suffix.lower()
        if path.is_file() and suffix in VIDEO_SUFFIXES:
            clips.append(Clip(path, "video", name))
        elif path.is_file() and suffix == ".npy":
            clips.append(Clip(path, "npy", name))
        elif path.is_dir() and _image_files(path):
            clips.append(Clip(path, "images", path.relative_to(root).as_posix()))
    if not clips:
        raise SurgeryError(
            f"no clips in {str(root)!r}",
            fix=f"put video files ({', '.join(VIDEO_SUFFIXES[:4])} ...), folders of images or (T, C, H, W) .npy "
            "arrays there",
        )
    seen: dict[str, Path] = {}
    for clip in clips:
        if clip.name in seen:
            raise SurgeryError(
                f"{str(seen[clip.name])!r} and {str(clip.path)!r} would both write {clip.name}.npy",
                fix="rename one of them",
            )
        seen[clip.name] = clip.path
    return clips


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip are read: ``frames`` uniformly over the clip (the centre
    frame of each of ``frames`` equal parts), or every ``stride``-th from the first
    (``stride`` 1: every frame). A clip shorter than ``frames`` is padded by ``pad``:
    ``last`` repeats the last frame, ``loop`` starts over, ``stretch`` repeats frames
    evenly, ``refuse`` fails the clip."""

    frames: int | None = None
    stride: int | None = None
    pad: str = "last"

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.stride is None):
            raise SurgeryError("sample either a number of frames or a stride", fix="give --frames T or --stride S")
        if (self.frames is not None and self.frames < 1) or (self.stride is not None and self.stride < 1):
            raise SurgeryError("--frames and --stride must be at least 1")
        if self.pad not in PAD_RULES:
            raise SurgeryError(f"unknown pad rule {self.pad!r}", fix=f"use one of {', '.join(PAD_RULES)}")

    def indices(self, total: int) -> list[int]:
        """The frame indices read, in order (repeats where padded)."""
        if total < 1:
            raise ClipError("it has no frames")
        if self.stride is not None:
            return list(range(0, total, self.stride))
        wanted = int(self.frames or 0)
        if total >= wanted or self.pad == "stretch":
            return [min(total - 1, int((i + 0.5) * total / wanted)) for i in range(wanted)]
        if self.pad == "refuse":
            raise ClipError(f"it has {total} frames, fewer than the {wanted} asked for (pad rule: refuse)")
        if self.pad == "loop":
            return [i % total for i in range(wanted)]
        return [min(i, total - 1) for i in range(wanted)]

    def describe(self) -> dict[str, Any]:
        return {"frames": self.frames, "stride": self.stride, "pad": self.pad}


class FrameConverter:
    """A decoded frame to the net's input ``(C, H, W)`` float32: FFmpeg's scaler resizes
    and converts the colours, numpy crops and normalises."""

    def __init__(self, preprocess: Preprocess, net_hw: tuple[int, int]) -> None:
        self.preprocess = preprocess
        self.net_hw = net_hw
        # One reformatter for every frame: it keeps FFmpeg's scaler between calls (a
        # frame's own reformat() builds a new one each time, twice the cost).
        self._reformatter = av_module().video.reformatter.VideoReformatter()

    def __call__(self, frame: Any) -> np.ndarray:
        height, width = self.preprocess.output_size((frame.height, frame.width), self.net_hw)
        fmt = _FORMATS[self.preprocess.channel_order]
        if (height, width) != (frame.height, frame.width) and self.preprocess.interpolation in _ANTIALIASED:
            # Resized as torchvision resizes (antialiased bilinear / bicubic, torch's own
            # kernel): FFmpeg's scaler filters differently (0.13 apart after normalising).
            image = _resize(
                self._reformatter.reformat(frame, format=fmt).to_ndarray(), (height, width), self.preprocess
            )
        else:
            image = self._reformatter.reformat(
                frame,
                width=width,
                height=height,
                format=fmt,
                interpolation=_INTERPOLATION[self.preprocess.interpolation],
            ).to_ndarray()
        if image.ndim == 2:
            image = image[:, :, None]
        try:
            return self.preprocess.finish(image, self.net_hw)
        except SurgeryError as error:
            raise ClipError(error.message) from None


def decode_image(path: Path, convert: FrameConverter) -> tuple[np.ndarray, int]:
    """One image file as the net's input ``(C, H, W)``, and how many colour channels the
    file itself has (1 for a grey image, 3 for colour)."""
    with _open(path) as container:
        try:
            frame = next(container.decode(_video_stream(container, path)), None)
        except av_module().error.FFmpegError as error:
            raise ClipError(f"image {path.name!r} cannot be decoded: {ffmpeg_reason(error)}") from None
    if frame is None:
        raise ClipError(f"image {path.name!r} holds no picture")
    grey = frame.format.name.startswith(("gray", "ya", "mono"))
    return convert(frame), 1 if grey else 3


#: Interpolations resized as torchvision does (the others by FFmpeg's scaler, as before).
_ANTIALIASED = ("BILINEAR", "BICUBIC")


def _resize(image: np.ndarray, size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """``(H, W[, C])`` uint8 to ``size`` with torch's antialiased interpolation, rounded back
    to uint8: what torchvision's ``Resize(antialias=True)`` does to a uint8 image tensor."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(image if image.ndim == 3 else image[:, :, None]))
    batch = pixels.permute(2, 0, 1)[None].float()
    mode = preprocess.interpolation.lower()
    resized = torch.nn.functional.interpolate(batch, size=size, mode=mode, align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


class ClipReader:
    """Reads one clip's sampled frames as preprocessed ``(B, C, H, W)`` float32 batches."""

    def __init__(self, clip: Clip, preprocess: Preprocess, net_hw: tuple[int, int]) -> None:
        self.clip = clip
        self._convert = FrameConverter(preprocess, net_hw)
        #: frames in the clip (as its container counts them, or counted)
        self.total = 0
        #: frames actually decoded (may be fewer than ``total`` for a file that ends early)
        self.decoded = 0

    def count(self, exact: bool = False) -> int:
        """The clip's frame count, read without decoding any frame: the container's word
        for it, or (``exact``, or when it says nothing, as mkv and webm do) its video
        packets counted. Sampling every k-th frame asks for ``exact``: the features file
        is sized by the count, and a header is only a claim."""
        if self.clip.kind == "images":
            self.total = len(_image_files(self.clip.path))
            return self.total
        with _open(self.clip.path) as container:
            stream = _video_stream(container, self.clip.path)
            total = 0 if exact else int(stream.frames or 0)
            if total <= 0:
                total = sum(1 for packet in container.demux(stream) if packet.size)
        self.total = total
        return total

    def batches(self, indices: list[int], batch: int) -> Iterator[np.ndarray]:
        """The frames at ``indices`` (in that order), preprocessed, ``batch`` at a time."""
        if indices != sorted(indices):  # loop padding: the clip is short, keep its frames
            frames = dict(self._decode(set(indices)))
            missing = sorted(set(indices) - set(frames))
            if missing:
                raise self._ended_early(missing[0])
            ordered = [frames[i] for i in indices]
            for start in range(0, len(ordered), batch):
                yield np.stack(ordered[start : start + batch])
            return
        pending: list[np.ndarray] = []
        position, last = 0, np.zeros(0)
        for index, frame in self._decode(set(indices)):
            while position < len(indices) and indices[position] == index:
                pending.append(frame)
                position += 1
            last = frame
            if len(pending) >= batch:
                yield np.stack(pending[:batch])
                pending = pending[batch:]
        if not last.size:
            raise ClipError("no frame could be decoded")
        if position < len(indices):
            raise self._ended_early(indices[position])
        for start in range(0, len(pending), batch):
            yield np.stack(pending[start : start + batch])

    def _ended_early(self, wanted: int) -> ClipError:
        """The decoder stopped (FFmpeg's threaded decoder does so without an error on a
        truncated file) before a frame the sampling wants: its header counted more."""
        return ClipError(
            f"the file ends after {self.decoded} frames, before frame {wanted + 1} of the {self.total} its header "
            "counts: it is truncated or damaged (frames are never made up for it)"
        )

    def _decode(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        last_wanted = max(wanted) if wanted else -1
        if self.clip.kind == "images":
            for index, path in enumerate(_image_files(self.clip.path)):
                if index in wanted:
                    image = decode_image(path, self._convert)[0]
                    self.decoded = index + 1
                    yield index, image
            return
        with _open(self.clip.path) as container:
            stream = _video_stream(container, self.clip.path)
            stream.thread_type = "AUTO"
            try:
                for index, frame in enumerate(container.decode(stream)):
                    self.decoded = index + 1
                    if index in wanted:
                        yield index, self._convert(frame)
                    if index >= last_wanted:
                        break
            except av_module().error.FFmpegError as error:
                raise ClipError(f"decoding failed after {self.decoded} frames: {ffmpeg_reason(error)}") from None


class _open:
    """``av.open`` as a context manager whose failures are :class:`ClipError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.container: Any = None

    def __enter__(self) -> Any:
        av = av_module()
        try:
            self.container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise ClipError(f"cannot open it: {ffmpeg_reason(error)}") from None
        return self.container

    def __exit__(self, *exc: object) -> None:
        self.container.close()


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        raise ClipError("it has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise ClipError(f"its codec {stream.codec_tag!r} is not one PyAV can decode")
    return stream


def open_source(source: str) -> Any:
    """A video file, or a camera: a number N opens /dev/videoN through FFmpeg's v4l2
    (Linux; other systems: give FFmpeg's device name as a path)."""
    av = av_module()
    if source.isdigit():
        try:
            return av.open(f"/dev/video{source}", format="v4l2")
        except (av.error.FFmpegError, OSError) as error:
            raise SurgeryError(f"cannot open camera {source}: {ffmpeg_reason(error)}") from None
    path = Path(source)
    if not path.is_file():
        raise SurgeryError(f"video {source!r} does not exist", fix="give a video file or a camera number")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise SurgeryError(f"cannot open video {source!r}: {ffmpeg_reason(error)}") from None


def ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's words for a failure, without PyAV's errno and repeated path."""
    return getattr(error, "strerror", None) or str(error)


__all__ = ["Clip", "ClipError", "ClipReader", "FrameConverter", "Sampling", "find_clips", "open_source"]
