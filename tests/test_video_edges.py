"""What users hit on the video paths: truncated files, resumes into a folder another model
filled, features folders inside the clips folder, a stream that breaks mid-file, signals,
and torchrun's exit codes. Clips are made here with PyAV."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import surgery
from surgery.cli import main
from surgery.errors import SurgeryError

pytest.importorskip("av")
from video_files import write_video

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _spec(folder: Path, frames: int = 6, seed: int = 3) -> Path:
    weights = ROOT / "surgery" / "zoo" / "digits_cnn.pt"
    spec = folder / f"video_{frames}_{seed}.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{weights}" }} input_shape: [1, 1, 8, 8] }}\n'
        f"seed: {seed}\n"
        f'edit {{ sequence {{ at: "features.pool2" frames: {frames}\n'
        '  layer { name: "lstm" type: "LSTM" recurrent_param { num_output: 16 return_sequences: false } }\n'
        '  layer { name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 } } } }\n'
        'edit { lr { up_to: "features.pool2" lr_mult: 0 } }\n'
    )
    return spec


def _video(path: Path, count: int, seed: int = 0, faststart: bool = False) -> Path:
    frames = np.random.default_rng(seed).integers(0, 256, (count, 8, 8), dtype=np.uint8)
    if not faststart:
        return write_video(path, frames)
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # the index first
        stream = container.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.height = stream.width = 8
        stream.pix_fmt = "yuv444p"
        for image in frames:
            rgb = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _truncated(path: Path) -> Path:
    """An mp4 whose header counts 90 frames and whose data ends after about 40."""
    _video(path, 90, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.45)])
    return path


def test_a_truncated_file_fails_with_its_reason_and_healthy_clips_say_nothing_false(tmp_path, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    _truncated(clips / "cut.mp4")
    _video(clips / "whole.mp4", 60)
    out = tmp_path / "out"
    assert main(["features", str(_spec(tmp_path, frames=16)), str(clips), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "cut.mp4" in err and "before frame" in err and "of the 90 its header counts" in err, err
    assert not (out / "cut.npy").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["clip"] for entry in manifest["failed"]] == ["cut"]
    whole = next(entry for entry in manifest["clips"] if entry["clip"] == "whole")
    assert "note" not in whole and whole["frames_total"] == 60 and whole["frames_read"] == 16


def test_a_resume_with_other_settings_is_refused_then_forced(tmp_path, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for index in range(3):
        _video(clips / f"c{index}.mp4", 20, seed=index)
    out = tmp_path / "out"
    spec = _spec(tmp_path)
    assert main(["features", str(spec), str(clips), "-o", str(out), "-q"]) == 0
    assert main(["features", str(spec), str(clips), "-o", str(out), "-q"]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    first = np.load(out / "c0.npy")
    for argv, changed in (
        (["--every-frame"], "sampling"),
        (["--pad", "loop"], "sampling"),
        ([], "model"),  # the same spec file name, another seed: another LSTM; the backbone is the same
    ):
        other = _spec(tmp_path, seed=4) if not argv else spec
        code = main(["features", str(other), str(clips), "-o", str(out), "-q", *argv])
        err = capsys.readouterr().err
        if changed == "model":  # the frozen backbone is what made the features: same fingerprint
            assert code == 0, err
            continue
        assert code == 2 and changed in err and "--force" in err, err
        assert np.array_equal(np.load(out / "c0.npy"), first)
    assert main(["features", str(spec), str(clips), "-o", str(out), "-q", "--every-frame", "--force"]) == 0
    assert np.load(out / "c0.npy").shape[0] == 20  # recomputed, every frame
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"]["stride"] == 1


def test_features_of_another_backbone_are_refused(tmp_path, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "c.mp4", 12)
    out = tmp_path / "out"
    assert main(["features", str(_spec(tmp_path)), str(clips), "-o", str(out), "-q"]) == 0
    other = tmp_path / "other.prototxt"
    other.write_text(_spec(tmp_path).read_text() + 'edit { classifier { layer: "features.conv1" num_output: 32 } }\n')
    code = main(["features", str(other), str(clips), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "another model" in err, err


def test_a_features_folder_inside_the_clips_folder_is_never_read_as_clips(tmp_path, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "a.mp4", 12)
    spec = _spec(tmp_path)
    assert main(["features", str(spec), str(clips), "-o", str(clips / "feats"), "-q"]) == 0
    assert main(["features", str(spec), str(clips), "-o", str(tmp_path / "elsewhere"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "1 done, 0 skipped, 0 failed" in out.replace(" (already done)", ""), out
    assert [p.name for p in (tmp_path / "elsewhere").glob("*.npy")] == ["a.npy"]


def test_a_resume_from_another_spelling_of_the_folder_keeps_the_counts(tmp_path, monkeypatch, capsys) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "a.mp4", 12)
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path)
    assert main(["features", str(spec), "clips", "-o", "out", "-q"]) == 0
    assert main(["features", str(spec), str(clips), "-o", str(tmp_path / "out"), "-q"]) == 0
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["clips"][0]
    assert entry["frames_total"] == 12 and entry["frames_read"] == 6


def test_a_bad_batch_size_leaves_no_folder(tmp_path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "a.mp4", 12)
    with pytest.raises(SurgeryError, match="batch_frames"):
        surgery.features(_spec(tmp_path), clips, tmp_path / "out", batch_frames=0)
    assert not (tmp_path / "out").exists()


def test_stream_of_a_truncated_file_keeps_the_frames_and_names_where_it_broke(tmp_path, capsys) -> None:
    video = _truncated(tmp_path / "cut.mp4")
    code = main(["stream", str(_spec(tmp_path)), str(video), "--every", "1000"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "frames in" in captured.out  # the summary of the frames scored
    assert "cut.mp4" in captured.err and "stopped at frame" in captured.err, captured.err


def test_sigterm_during_features_says_what_was_kept(tmp_path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for index in range(40):
        _video(clips / f"c{index:02d}.mp4", 30, seed=index)
    run = subprocess.Popen(
        [sys.executable, "-m", "surgery.cli", "features", str(_spec(tmp_path)), str(clips), "-o", str(tmp_path / "o")],
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert run.stderr is not None
    seen = b""
    while b" 1/40 " not in seen and b"1/40" not in seen:  # the progress bar: a clip is finished
        chunk = os.read(run.stderr.fileno(), 256)
        if not chunk:
            break
        seen += chunk
    run.send_signal(signal.SIGTERM)
    rest = seen + run.stderr.read()
    assert run.wait(timeout=120) == 143, rest
    text = rest.decode()
    assert "run the same command again to resume" in text and "keeps the whole feature files" in text, text
    assert "the output folder is as it was" not in text
    written = len(list((tmp_path / "o").glob("*.npy")))
    assert 1 <= written < 40


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("strict", [False, True])
def test_a_torchrun_worker_with_a_failed_clip_exits_0_unless_strict(strict: bool, tmp_path) -> None:
    """Under torchrun a worker's exit 1 makes torchrun print its own traceback over the
    summary: failures are recorded and printed last, and only --strict exits 1."""
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "good.mp4", 12)
    (clips / "bad.mp4").write_bytes(b"\x00" * 400)
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    argv = ["features", str(_spec(tmp_path)), str(clips), "-o", str(tmp_path / "o"), "-q", "--device", "cpu"]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "surgery.cli", *argv, *(["--strict"] if strict else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert time.monotonic() - started < 300
    assert done.returncode == (1 if strict else 0), done.stderr
    lines = done.stderr.strip().splitlines()
    assert "bad.mp4" in done.stderr and "Traceback" not in done.stderr
    if not strict:
        assert lines[-1].endswith("clips failed (listed in manifest.json); --strict exits 1"), lines


@pytest.mark.parametrize("content", ["smooth", "noise"])
@pytest.mark.parametrize(
    ("size", "resize", "crop"),
    [((360, 640), 256, 224), ((233, 301), 96, 80), ((100, 150), 64, 63), ((60, 90), 128, 112)],
)
def test_frames_are_preprocessed_as_torchvision_transforms_them(size, resize, crop, content, tmp_path) -> None:
    """A decoded frame, through the features path (a torchvision-style preprocessing), is
    what torchvision's own Resize(antialias) + CenterCrop give the same decoded frame,
    within 1/255 per pixel (odd margins included: the crop offset rounds as torchvision's)."""
    import av

    tv = pytest.importorskip("torchvision.transforms.v2.functional")
    import torch

    from surgery.preprocess import Preprocess
    from surgery.video.decode import FrameConverter

    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 9, 12)).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic").clamp(0, 255)
    image = image.round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    if content == "noise":  # FFmpeg's own bilinear scaler was 9/255 off here
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    decoded = frame.to_ndarray(format="rgb24")  # what PyAV hands both sides
    identity = Preprocess(channel_order="RGB", resize=(resize,), crop=(crop,), scale=1.0)
    ours = FrameConverter(identity, (crop, crop))(frame)
    reference = tv.center_crop(tv.resize(torch.from_numpy(decoded).permute(2, 0, 1), [resize], antialias=True), [crop])
    difference = np.abs(ours - reference.numpy().astype(np.float32)).max()
    assert difference <= 1.0, difference  # 1/255 once divided by 255


def test_caffe_crops_keep_caffes_floor() -> None:
    from surgery.preprocess import Preprocess

    pixels = np.arange(5 * 5, dtype=np.uint8).reshape(5, 5, 1)
    floor = Preprocess(channel_order="GRAY", crop=(2,), crop_offset="floor").finish(pixels, (2, 2))
    rounded = Preprocess(channel_order="GRAY", crop=(2,)).finish(pixels, (2, 2))
    assert floor[0, 0, 0] == pixels[1, 1, 0] and rounded[0, 0, 0] == pixels[2, 2, 0]  # margin 3: 1 vs round(1.5)=2
