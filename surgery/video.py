"""Clip models in use: split one at its freeze boundary, and cache its backbone's
features over a folder of clips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.interrupts import checkpoint
from surgery.ir import Net


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
    batch_frames: int = 512,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Path]:
    """Run a clip model's frozen backbone once over every ``*.npy`` clip in ``clips_dir``
    (each ``(T, C, H, W)``) and write ``out_dir/<same name>.npy`` with its features
    ``(T, F)``, each file atomically. ``model``: a spec file or a clip-model net.
    ``progress(done, total, name)`` is called after each clip. Returns the files written.

    Example:
        >>> surgery.features("specs/digits_video.prototxt", "clips/", "feats/")
    """
    import numpy as np
    import torch

    from surgery.emitters.split import backbone_net
    from surgery.emitters.torch_module import emit_torch
    from surgery.errors import ShapeError
    from surgery.runner import plan

    net = model if isinstance(model, Net) else plan(model, shapes_only=False).net
    backbone = backbone_net(net)
    frame_shape = tuple(backbone.input_layers()[0].params["shape"][1:])
    clips = sorted(Path(clips_dir).glob("*.npy"))
    if not clips:
        raise SurgeryError(f"no .npy clips in {str(clips_dir)!r}", fix="save each clip as an (T, C, H, W) .npy array")
    runner = emit_torch(backbone, copy_weights=False).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for done, clip_file in enumerate(clips, 1):
        checkpoint()
        frames = np.load(clip_file, allow_pickle=False)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != frame_shape:
            raise ShapeError(
                f"clip {clip_file.name!r} has shape {frames.shape}, expected (T, {', '.join(map(str, frame_shape))})",
                subject=str(clip_file),
            )
        with torch.no_grad():
            values = torch.cat(
                [
                    runner(torch.from_numpy(np.ascontiguousarray(chunk, np.float32)))
                    for chunk in np.array_split(frames, max(1, -(-len(frames) // batch_frames)))
                ]
            )
        target = out / clip_file.name
        temp = target.with_name(f".{target.name}.partial")
        with open(temp, "wb") as handle:
            np.save(handle, values.numpy())
        temp.replace(target)
        written.append(target)
        if progress is not None:
            progress(done, len(clips), clip_file.name)
    return written
