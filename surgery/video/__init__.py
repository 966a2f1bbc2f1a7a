"""Clip models in use: split one at its freeze boundary, cache its backbone's features
over a folder of clips or videos (:mod:`surgery.video.feature_cache`), and stream a video
through its step model (:mod:`surgery.video.stream`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from surgery.ir import Net
from surgery.video.decode import Sampling
from surgery.video.feature_cache import FeaturesRun, Shard, extract
from surgery.video.stream import StreamRun, stream


def split(net: Net) -> tuple[Net, Net]:
    """A clip model with a frozen backbone as ``(backbone, head)`` nets: the backbone an
    image net from one frame to its features ``(N, F)``, the head a net on the features
    ``(N, T, F)``. Emit each with :func:`to_torch` / :func:`save_onnx`.

    Example:
        >>> backbone, head = surgery.split(clip_net)
        >>> head_model = surgery.to_torch(head)          # train this on cached features
    """
    from surgery.emitters.split import backbone_net, head_net

    return backbone_net(net), head_net(net)


def features(
    model: str | Path | Net,
    clips_dir: str | Path,
    out_dir: str | Path,
    *,
    frames: int | None = None,
    stride: int | None = None,
    pad: str = "last",
    shard: str | None = None,
    batch_frames: int = 64,
    device: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> FeaturesRun:
    """Run a clip model's frozen backbone over every clip under ``clips_dir`` (video
    files, folders of images, ``(T, C, H, W)`` ``.npy`` arrays) and write
    ``out_dir/<clip>.npy`` with its features ``(T, F)``, each file atomically; a rerun
    skips what is done. Video frames are decoded with the net's preprocessing.

    Args:
        model: a spec file or a clip-model net.
        frames: ``T`` frames uniformly over each video (default: the clip model's own T).
        stride: every ``stride``-th frame instead (1: every frame).
        pad: a video shorter than ``frames``: ``last``, ``loop``, ``stretch`` or ``refuse``.
        shard: ``"K/N"``: this worker's share (under torchrun: RANK/WORLD_SIZE by default).
        batch_frames: frames per backbone call.
        device: where the backbone runs (default: the rank's GPU when there is one).
        progress: ``progress(done, total, name)`` after each clip.
        force: ``out_dir`` holds features another model, preprocessing or sampling made
            (its fingerprint differs): recompute every clip instead of refusing.

    Returns:
        A :class:`FeaturesRun`: ``done``, ``skipped`` and ``failed`` clip records, and the
        manifest once every clip has its features.

    Example:
        >>> run = surgery.features("specs/digits_video.prototxt", "videos/", "feats/")
        >>> print(run.summary())
    """
    sampling = Sampling(frames=frames, stride=stride, pad=pad) if frames is not None or stride is not None else None
    return extract(
        model,
        clips_dir,
        out_dir,
        sampling=sampling,
        pad=pad,
        shard=Shard.parse(shard) if shard else None,
        batch_frames=batch_frames,
        device=device,
        progress=progress,
        force=force,
    )


__all__ = ["FeaturesRun", "StreamRun", "features", "split", "stream"]
