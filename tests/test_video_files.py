"""Real video in: clips as video files (made here with PyAV), decoded with the net's
preprocessing, sampled, cached as features by one worker or several, resumed after a
kill, and streamed through the step model. Features are compared with the shipped CNN
run by hand on frames PyAV decodes independently."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import surgery
from surgery.cli import main
from surgery.video.decode import ClipError, Sampling
from surgery.zoo import digits_cnn

pytest.importorskip("av")
from video_files import decode_all, write_audio_only, write_video

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
HEAD = """
edit { sequence { at: "features.pool2" frames: 6
                  layer { name: "lstm" type: "LSTM" recurrent_param { num_output: 16 return_sequences: false } }
                  layer { name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 } } } }
edit { lr { up_to: "features.pool2" lr_mult: 0 } }
"""


def _spec(tmp_path: Path, preprocess: str = "", frames: int = 6) -> Path:
    weights = ROOT / "surgery" / "zoo" / "digits_cnn.pt"
    spec = tmp_path / "video.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{weights}" }} input_shape: [1, 1, 8, 8] '
        f"{preprocess} }}\nseed: 3\n" + HEAD.replace("frames: 6", f"frames: {frames}")
    )
    return spec


def _frames(count: int, seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size), dtype=np.uint8)


def _by_hand(frames: np.ndarray, indices: list[int], scale: float = 1 / 255) -> np.ndarray:
    """The shipped CNN on the chosen frames (T, H, W) uint8, scaled: (T, 256)."""
    x = torch.from_numpy(frames[indices].astype(np.float32) * np.float32(scale))[:, None]
    with torch.no_grad():
        return torch.flatten(digits_cnn().features(x), 1).numpy()


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    (folder / "walk").mkdir(parents=True)
    write_video(folder / "a.mp4", _frames(15, 0))
    write_video(folder / "walk" / "b.mkv", _frames(9, 1))  # mkv: the container does not count frames
    write_video(folder / "c.avi", _frames(4, 2), codec="mpeg4")  # shorter than T: padded
    images = folder / "d"
    images.mkdir()
    for index, frame in enumerate(_frames(7, 3)):
        write_video(images / f"{index:03d}.png", frame[None], codec="png")
    return folder


def test_sampling_rules() -> None:
    assert Sampling(frames=4).indices(8) == [1, 3, 5, 7]  # the centre of each of 4 parts
    assert Sampling(frames=4).indices(4) == [0, 1, 2, 3]
    assert Sampling(frames=5).indices(3) == [0, 1, 2, 2, 2]
    assert Sampling(frames=5, pad="loop").indices(3) == [0, 1, 2, 0, 1]
    assert Sampling(frames=6, pad="stretch").indices(3) == [0, 0, 1, 1, 2, 2]
    assert Sampling(stride=3).indices(8) == [0, 3, 6]
    with pytest.raises(ClipError, match="fewer than the 5 asked for"):
        Sampling(frames=5, pad="refuse").indices(3)
    with pytest.raises(ClipError, match="no frames"):
        Sampling(frames=5).indices(0)


def test_features_of_video_files_match_the_cnn_on_independently_decoded_frames(tmp_path: Path, clips: Path) -> None:
    run = surgery.features(_spec(tmp_path), clips, tmp_path / "feats")
    assert not run.failed and len(run.done) == 4
    expected = {
        "a": (decode_all(clips / "a.mp4"), Sampling(frames=6).indices(15)),
        "walk/b": (decode_all(clips / "walk" / "b.mkv"), Sampling(frames=6).indices(9)),
        "c": (decode_all(clips / "c.avi"), [0, 1, 2, 3, 3, 3]),
        "d": (np.stack([decode_all(p)[0] for p in sorted((clips / "d").glob("*.png"))]), Sampling(frames=6).indices(7)),
    }
    for name, (frames, indices) in expected.items():
        got = np.load(tmp_path / "feats" / f"{name}.npy")
        assert got.shape == (6, 256)
        np.testing.assert_allclose(got, _by_hand(frames, indices), rtol=0, atol=1e-5, err_msg=name)
    manifest = json.loads((tmp_path / "feats" / "manifest.json").read_text())
    rows = {row["clip"]: row for row in manifest["clips"]}
    assert rows["a"]["frames_total"] == 15 and rows["walk/b"]["frames_total"] == 9 and rows["c"]["frames_read"] == 6
    assert manifest["preprocess"]["channel_order"] == "GRAY" and manifest["preprocess"]["origin"] == {"*": "default"}
    # every frame, by stride
    every = surgery.features(_spec(tmp_path), clips, tmp_path / "every", stride=1)
    assert not every.failed
    np.testing.assert_allclose(
        np.load(tmp_path / "every" / "a.npy"), _by_hand(expected["a"][0], list(range(15))), rtol=0, atol=1e-5
    )


def test_preprocessing_resizes_crops_and_normalises_as_stated(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    frames = _frames(3, 5, size=20)
    write_video(folder / "big.mp4", frames)
    spec = _spec(tmp_path, "preprocess { crop: 8 mean: 100 std: 50 scale: 2 }", frames=3)
    surgery.features(spec, folder, tmp_path / "feats")
    decoded = decode_all(folder / "big.mp4")[:, 6:14, 6:14]  # the centre crop, no resize
    x = torch.from_numpy((decoded.astype(np.float32) - 100) / 50 * 2)[:, None]
    with torch.no_grad():
        want = torch.flatten(digits_cnn().features(x), 1).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "feats" / "big.npy"), want, rtol=0, atol=1e-4)
    report = surgery.plan(spec).report.as_dict()["preprocess"]
    assert report["crop"] == [8] and report["origin"] == {"*": "spec"} and report["mean"] == [100.0]


def test_bad_videos_are_named_and_the_other_clips_are_written(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "good.mp4", _frames(8, 0))
    write_video(folder / "short.mp4", _frames(2, 1))
    write_video(folder / "small.mp4", _frames(5, 2, size=4))
    # seeded: about 1 in 80 random 3000-byte strings probe as FFmpeg's "lrc" lyrics format,
    # which opens (and then has no video stream); these bytes open as nothing
    (folder / "garbage.webm").write_bytes(random.Random(0).randbytes(3000))
    write_audio_only(folder / "sound.mkv")
    truncated = write_video(folder / "cut.mp4", _frames(30, 3, size=32)).read_bytes()
    (folder / "cut.mp4").write_bytes(truncated[: len(truncated) // 2])
    spec = _spec(tmp_path, "preprocess { crop: 8 }", frames=4)
    code = main(["features", str(spec), str(folder), "-o", str(tmp_path / "feats"), "--pad", "refuse", "-q"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "short.mp4: it has 2 frames, fewer than the 4 asked for (pad rule: refuse)" in captured.err
    assert "small.mp4: frames of 4x4 are smaller than the crop 8x8" in captured.err
    assert "sound.mkv: it has no video stream" in captured.err
    assert "garbage.webm: cannot open it" in captured.err
    assert "cut.mp4: cannot open it" in captured.err  # its index (moov) is in the lost half
    assert "1 done, 0 skipped (already done), 5 failed" in captured.out
    assert [p.name for p in (tmp_path / "feats").glob("*.npy")] == ["good.npy"]
    assert not list((tmp_path / "feats").glob(".*.partial"))
    manifest = json.loads((tmp_path / "feats" / "manifest.json").read_text())
    assert len(manifest["failed"]) == 5 and [row["clip"] for row in manifest["clips"]] == ["good"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "2/2"], "shard 2/2 is out of range"),
        (["--shard", "x"], "--shard 'x' is not K/N"),
        (["--frames", "0"], "--frames and --stride must be at least 1"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path: Path, clips: Path, args: list[str], message: str, capsys) -> None:
    out = tmp_path / "feats"
    assert main(["features", str(_spec(tmp_path)), str(clips), "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("device", ["cuda:99", "tpu"])
def test_a_device_that_is_not_there_is_refused_by_features_and_stream(
    tmp_path: Path, clips: Path, device: str, capsys
) -> None:
    out = tmp_path / "feats"
    assert main(["features", str(_spec(tmp_path)), str(clips), "-o", str(out), "--device", device]) == 2
    err = capsys.readouterr().err
    assert device in err and "Traceback" not in err and not list(out.rglob("*.npy"))
    video = write_video(tmp_path / "six.mp4", _frames(6, 9))
    assert main(["stream", str(_spec(tmp_path, frames=6)), str(video), "--device", device]) == 2
    err = capsys.readouterr().err
    assert device in err and "Traceback" not in err


def test_an_empty_folder_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no videos")
    assert main(["features", str(_spec(tmp_path)), str(tmp_path / "empty"), "-o", str(tmp_path / "f")]) == 2
    assert "no clips in" in capsys.readouterr().err


def test_shards_split_the_clips_and_the_last_writes_the_manifest(tmp_path: Path, clips: Path) -> None:
    spec = _spec(tmp_path)
    whole = surgery.features(spec, clips, tmp_path / "whole")
    first = surgery.features(spec, clips, tmp_path / "sharded", shard="0/2")
    assert [r["clip"] for r in first.done] == ["a", "d"] and first.manifest is None and first.waiting == 2
    second = surgery.features(spec, clips, tmp_path / "sharded", shard="1/2")
    assert [r["clip"] for r in second.done] == ["c", "walk/b"] and second.manifest is not None
    for record in whole.done:
        name = record["clip"]
        assert (tmp_path / "whole" / f"{name}.npy").read_bytes() == (tmp_path / "sharded" / f"{name}.npy").read_bytes()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("whole", "sharded")]
    assert [r["sha256"] for r in manifests[0]["clips"]] == [r["sha256"] for r in manifests[1]["clips"]]


def test_a_rerun_skips_what_is_done_and_redoes_missing_or_damaged_outputs(tmp_path: Path, clips: Path) -> None:
    spec, out = _spec(tmp_path), tmp_path / "feats"
    surgery.features(spec, clips, out)
    good = (out / "a.npy").read_bytes()
    (out / "c.npy").unlink()
    (out / "d.npy").write_bytes(good[:100])  # truncated
    again = surgery.features(spec, clips, out)
    assert sorted(r["clip"] for r in again.done) == ["c", "d"]
    assert sorted(r["clip"] for r in again.skipped) == ["a", "walk/b"]
    assert json.loads((out / "manifest.json").read_text())["clips"][2]["frames_read"] == 6


def test_a_killed_run_resumes_to_the_same_outputs(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for index in range(40):
        write_video(folder / f"clip{index:02d}.mp4", _frames(12, index))
    spec, out = _spec(tmp_path), tmp_path / "feats"
    command = [sys.executable, "-m", "surgery.cli", "features", str(spec), str(folder), "-o", str(out), "-q"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.npy"))) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (143, 0), err
    assert "Traceback" not in err
    first = len(list(out.glob("*.npy")))
    assert not (out / "manifest.json").exists() or first == 40
    resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{40 - first} done, {first} skipped" in resumed.stdout
    clean = surgery.features(spec, folder, tmp_path / "clean")
    assert len(clean.done) == 40
    for index in range(40):
        name = f"clip{index:02d}.npy"
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_torchrun_two_ranks_split_the_work(tmp_path: Path, clips: Path) -> None:
    spec, out = _spec(tmp_path), tmp_path / "feats"
    arguments = ["features", str(spec), str(clips), "-o", str(out), "-q"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # the README's form where the console script is installed (CI), else the same through python -m
    command = (
        [*launcher, "--no-python", "surgery", *arguments]
        if shutil.which("surgery")
        else [*launcher, "-m", "surgery.cli", *arguments]
    )
    run = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[rank 0/2] 2 done" in run.stdout and "[rank 1/2] 2 done" in run.stdout
    assert sorted(p.name for p in (out / ".surgery-features").glob("part-*")) == [
        "part-0-of-2.jsonl",
        "part-1-of-2.jsonl",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    single = surgery.features(spec, clips, tmp_path / "single")
    assert [r["sha256"] for r in manifest["clips"]] == [
        r["sha256"] for r in json.loads(single.manifest.read_text())["clips"]
    ]


def test_stream_gives_the_clip_models_scores_frame_by_frame(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, frames=6)
    video = write_video(tmp_path / "six.mp4", _frames(6, 9))
    plan = surgery.plan(spec, shapes_only=False)
    frames = decode_all(video).astype(np.float32) / 255
    clip_model = surgery.to_torch(plan.net).eval()
    with torch.no_grad():
        want = clip_model(torch.from_numpy(frames)[None, :, None]).numpy()[0]
    seen: list[np.ndarray] = []
    for use_onnx in (False, True):
        run = surgery.stream(spec, str(video), use_onnx=use_onnx, on_frame=lambda i, s: seen.append(s.copy()))
        assert run.frames == 6
        np.testing.assert_allclose(run.scores, want, rtol=0, atol=1e-5)
    # the scores after frame 3 are the clip model's on the first three frames
    with torch.no_grad():
        three = surgery.to_torch(surgery.plan(_spec(tmp_path, frames=3), shapes_only=False).net).eval()
        np.testing.assert_allclose(seen[2], three(torch.from_numpy(frames[:3])[None, :, None]).numpy()[0], atol=1e-5)
    assert main(["stream", str(spec), str(video), "--every", "3", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("frame 3: ") and "\nframe 6: " in out and "frames/s sustained" in out
    assert main(["stream", str(spec), str(tmp_path / "missing.mp4")]) == 2


def test_ddp_training_of_the_emitted_head_keeps_the_ranks_weights_equal(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    rng = np.random.default_rng(0)
    for label in ("left", "right", "still"):
        (tmp_path / "feats" / label).mkdir(parents=True)
        for index in range(5):
            np.save(tmp_path / "feats" / label / f"{index}.npy", rng.random((6, 256), dtype=np.float32))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "examples" / "train_head_ddp.py"), str(spec), str(tmp_path / "feats"),
        "--epochs", "3", "--batch", "4", "--save", str(tmp_path / "head.pt"),
    ]  # fmt: skip
    run = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 ranks, weights agree: max |difference| 0" in run.stdout
    trained = torch.load(tmp_path / "head.pt", weights_only=True)
    _, head = surgery.split(surgery.plan(spec, shapes_only=False).net)
    initial = surgery.to_torch(head).state_dict()
    assert sorted(trained) == sorted(initial)
    assert all(not torch.equal(trained[k], initial[k]) for k in trained)  # every head weight trained
    # the trained head streams: the step model takes its values by parameter name
    video = write_video(tmp_path / "v.mp4", _frames(6, 4))
    assert main(["stream", str(spec), str(video), "--weights", str(tmp_path / "head.pt"), "-q"]) == 0
    wrong = tmp_path / "wrong.pt"
    torch.save({"lstm.weight_ih": trained["lstm.weight_ih_l0"]}, wrong)
    with pytest.raises(surgery.SurgeryError, match=r"'lstm.weight_ih'.*does not have"):
        surgery.stream(spec, str(video), weights=wrong)


def test_torchrun_ranks_that_do_not_share_the_output_folder_stop_before_any_work(tmp_path: Path, clips: Path) -> None:
    script = tmp_path / "per_machine.py"
    script.write_text(
        "import os, sys\n"
        "import surgery\n"
        "from surgery.errors import SurgeryError\n"
        f"out = {str(tmp_path)!r} + '/machine' + os.environ['RANK']  # as if each machine mounted its own disk\n"
        "try:\n"
        f"    surgery.features({str(_spec(tmp_path))!r}, {str(clips)!r}, out)\n"
        "except SurgeryError as error:\n"
        "    print('refused:', error.message); sys.exit(2)\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    run = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "the ranks do not share the output folder" in run.stdout
    assert not list(tmp_path.glob("machine*/*.npy"))


def test_the_output_folder_is_checked_and_never_read_as_clips(tmp_path: Path, clips: Path, capsys) -> None:
    spec = _spec(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    for out, message in ((tmp_path / "a_file", "is a file"), (clips, "is the clips folder")):
        assert main(["features", str(spec), str(clips), "-o", str(out), "-q"]) == 2
        assert message in capsys.readouterr().err
    inside = clips / "features"  # a sub-folder of the clips folder: its .npy files are not clips
    for _ in range(2):
        assert main(["features", str(spec), str(clips), "-o", str(inside), "-q"]) == 0
    assert "0 done, 4 skipped (already done), 0 failed" in capsys.readouterr().out


def test_a_clip_that_fails_half_way_leaves_no_partial_file(tmp_path: Path, capsys) -> None:
    images = tmp_path / "clips" / "broken"
    images.mkdir(parents=True)
    for index, frame in enumerate(_frames(6, 7)):
        write_video(images / f"{index:03d}.png", frame[None], codec="png")
    (images / "004.png").write_bytes(b"not a picture" * 10)  # read after the first batch was written
    out = tmp_path / "feats"
    argv = ["features", str(_spec(tmp_path)), str(tmp_path / "clips"), "-o", str(out), "--batch-frames", "2", "-q"]
    assert main(argv) == 1
    assert "broken: image '004.png' cannot be decoded" in capsys.readouterr().err
    assert [p.name for p in out.iterdir() if p.name != ".surgery-features"] == ["manifest.json"]


def test_videos_written_by_opencv_read_as_opencv_reads_them(tmp_path: Path) -> None:
    """Files from another writer: OpenCV's own MJPG AVI muxer (and its mp4v MP4), decoded
    here by OpenCV as an independent reader of the same frames."""
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path / "clips"
    folder.mkdir()
    y, x = np.mgrid[0:8, 0:8]
    source = [(127 + 120 * np.sin((x + t) / 2.0) * np.cos(y / 3.0)).astype(np.uint8) for t in range(12)]
    for file, fourcc in (("mjpg.avi", "MJPG"), ("mp4v.mp4", "mp4v")):
        writer = cv2.VideoWriter(str(folder / file), cv2.VideoWriter_fourcc(*fourcc), 25, (8, 8), True)
        assert writer.isOpened(), file
        for frame in source:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
    run = surgery.features(_spec(tmp_path, frames=12), folder, tmp_path / "feats", pad="refuse")
    assert not run.failed and {r["clip"]: r["frames_total"] for r in run.done} == {"mjpg": 12, "mp4v": 12}
    capture = cv2.VideoCapture(str(folder / "mjpg.avi"))
    decoded = []
    while (read := capture.read())[0]:
        decoded.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2GRAY))
    # JPEG frames: OpenCV's gray and FFmpeg's luma agree; the CNN on them agrees to float rounding
    want = _by_hand(np.stack(decoded), list(range(12)))
    np.testing.assert_allclose(np.load(tmp_path / "feats" / "mjpg.npy"), want, rtol=0, atol=1e-5)
