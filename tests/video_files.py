"""Video files the tests make themselves with PyAV (its wheel carries FFmpeg's encoders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

av = __import__("pytest").importorskip("av")


def write_video(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> Path:
    """``frames`` (T, H, W) gray or (T, H, W, 3) RGB uint8 as a video file (H, W even)."""
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    options = {"crf": "0"} if codec == "libx264" else {}  # lossless: frames decode as written
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = {"libx264": "yuv444p", "png": "rgb24"}.get(codec, "yuv420p")
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.2) -> Path:
    """A file with an audio stream and no video."""
    rate = 8000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        samples = (np.sin(np.arange(int(rate * seconds)) / 5) * 3000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all(path: Path, fmt: str = "gray") -> np.ndarray:
    """Every frame of a video at its own size, as PyAV gives it: (T, H, W[, 3]) uint8."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format=fmt) for frame in container.decode(video=0)])
