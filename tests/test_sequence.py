"""The time axis: `sequence` turns an image net into a clip model (N, T, C, H, W). Each
head is compared with the same computation written by hand in torch (the per-frame CNN
on N*T frames, then torch's own recurrent module), and the ONNX file with onnxruntime
at other N and T than the model was built with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgery
from surgery.cli import main
from surgery.emitters.onnx_model import emit_onnx
from surgery.errors import ModelFormatError, ShapeError, SpecError
from surgery.verify import onnx_session
from surgery.zoo import digits_cnn

ATOL = 1e-5
LSTM_LAST = 'name: "lstm" type: "LSTM" recurrent_param { num_output: 12 return_sequences: false }'
SCORES = 'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }'


def clip_net(head: list[str], frames: int = 5, at: str | None = "features.pool2", frozen: bool = True):
    net = surgery.load(digits_cnn(), (2, 1, 8, 8))
    surgery.sequence(net, head, at=at, frames=frames, seed=5)
    if frozen:
        surgery.lr(net, up_to="features.pool2", lr_mult=0)
    return net


def frame_features(clips: torch.Tensor) -> torch.Tensor:
    """The shipped CNN on every frame, by hand: (N, T, 256)."""
    cnn = digits_cnn()
    with torch.no_grad():
        return torch.flatten(cnn.features(clips.flatten(0, 1)), 1).unflatten(0, clips.shape[:2])


def _module(net, name: str, module: nn.Module) -> nn.Module:
    module.load_state_dict({role: blob.data for role, blob in net.layer(name).blobs.items()})
    return module


def _onnx_matches(net, model: nn.Module, tmp_path: Path, shapes=((2, 5, 1, 8, 8), (3, 9, 1, 8, 8))) -> None:
    session = onnx_session(emit_onnx(net, tmp_path / "clip.onnx"))
    for shape in shapes:  # N and T are symbolic
        clips = torch.rand(*shape)
        with torch.no_grad():
            want = model(clips).numpy()
        np.testing.assert_allclose(session.run(None, {"x": clips.numpy()})[0], want, rtol=0, atol=ATOL)


def test_lstm_head_matches_hand_written_clip_model(tmp_path: Path) -> None:
    net = clip_net([LSTM_LAST, SCORES])
    assert net.shape("x") == (2, 5, 1, 8, 8)
    assert net.shape("features.pool2") == (2, 5, 64, 2, 2)  # the report shows the time axis
    assert net.shape("scores") == (2, 11)
    model = surgery.to_torch(net).eval()
    lstm = _module(net, "lstm", nn.LSTM(256, 12, batch_first=True))
    fc = _module(net, "scores", nn.Linear(12, 11))
    clips = torch.rand(2, 5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), fc(lstm(frame_features(clips))[0][:, -1]), rtol=0, atol=1e-6)
    _onnx_matches(net, model, tmp_path)
    table = surgery.report(net).format_table()
    assert "2x5x64x2x2" in table and "features.pool2/frame_flatten" in table


@pytest.mark.parametrize("pool", ["AVE", "MAX"])
def test_temporal_pooling_head(pool: str, tmp_path: Path) -> None:
    net = clip_net([f'name: "pool" type: "TemporalPooling" pooling_param {{ pool: {pool} }}', SCORES])
    model = surgery.to_torch(net).eval()
    fc = _module(net, "scores", nn.Linear(256, 11))
    clips = torch.rand(2, 5, 1, 8, 8)
    feats = frame_features(clips)
    pooled = feats.mean(1) if pool == "AVE" else feats.amax(1)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), fc(pooled), rtol=0, atol=1e-6)
    _onnx_matches(net, model, tmp_path)


def test_per_step_scores_from_all_steps_gru(tmp_path: Path) -> None:
    net = clip_net(
        [
            'name: "gru" type: "GRU" recurrent_param { num_output: 8 num_layers: 2 }',
            'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 axis: 2 }',
        ]
    )
    assert net.shape("scores") == (2, 5, 11)
    model = surgery.to_torch(net).eval()
    gru = _module(net, "gru", nn.GRU(256, 8, num_layers=2, batch_first=True))
    fc = _module(net, "scores", nn.Linear(8, 11))
    clips = torch.rand(2, 5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), fc(gru(frame_features(clips))[0]), rtol=0, atol=1e-6)
    _onnx_matches(net, model, tmp_path)


def test_frozen_backbone_builds_no_autograd_graph() -> None:
    net = clip_net([LSTM_LAST, SCORES])
    model = surgery.to_torch(net).train()
    seen = {}
    model.get_submodule("features.pool2").register_forward_hook(lambda m, i, out: seen.update(out=out))
    loss = model(torch.rand(2, 5, 1, 8, 8)).square().mean()
    assert seen["out"].grad_fn is None and not seen["out"].requires_grad  # nothing kept for backward
    loss.backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert model.lstm.weight_ih_l0.grad is not None and model.scores.weight.grad is not None


def test_fine_tune_the_top_of_the_backbone_with_a_smaller_lr() -> None:
    net = clip_net([LSTM_LAST, SCORES], frozen=False)
    surgery.lr(net, up_to="features.pool1", lr_mult=0)
    surgery.lr(net, layer="features.conv3", lr_mult=0.1)
    model = surgery.to_torch(net).train()
    groups = {round(group["lr_mult"], 6): group["names"] for group in model.param_groups(lr=0.01)}
    assert groups[0.1] == ["features.conv3.weight", "features.conv3.bias"]
    model(torch.rand(2, 5, 1, 8, 8)).sum().backward()
    assert model.features.conv3.weight.grad is not None and model.features.conv1.weight.grad is None


def test_spec_apply_writes_a_clip_model_that_loads_standalone(tmp_path: Path) -> None:
    spec = tmp_path / "clip.prototxt"
    weights = Path(surgery.zoo.digits.WEIGHTS)
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{weights}" }} '
        f"input_shape: [1, 1, 8, 8] }}\nseed: 3\n"
        f'edit {{ sequence {{ at: "features.pool2" frames: 7 layer {{ {LSTM_LAST} }} layer {{ {SCORES} }} }} }}\n'
        'edit { lr { up_to: "features.pool2" lr_mult: 0 } }\n'
    )
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 0
    model = surgery.load_torch_folder(tmp_path / "out" / "torch").eval()
    clips = torch.rand(3, 4, 1, 8, 8)
    session = onnx_session(tmp_path / "out" / "model.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": clips.numpy()})[0], model(clips).numpy(), atol=ATOL)
    assert main(["verify", str(spec)]) == 0


def test_sequence_needs_a_single_image_input() -> None:
    net = surgery.load(nn.Sequential(nn.Linear(4, 4)), (2, 4))
    with pytest.raises(SpecError, match="single image input"):
        surgery.sequence(net, [LSTM_LAST])


def test_head_that_cannot_take_per_frame_features_is_refused_by_name(tmp_path: Path, capsys) -> None:
    net = surgery.load(digits_cnn(), (1, 1, 8, 8))
    before = net.layer_names()
    conv = 'name: "conv" type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 }'
    with pytest.raises(ShapeError, match="the head's first layer 'conv' cannot take") as error:
        surgery.sequence(net, [conv], at="features.pool2")
    assert "LSTM" in error.value.fix
    assert net.layer_names() == before and net.shape("x") == (1, 1, 8, 8)  # untouched
    spec = tmp_path / "bad.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
        f'edit {{ sequence {{ at: "features.pool2"\n  layer {{ {conv} }} }} }}\n'
    )
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 2
    assert "bad.prototxt:3:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_caffe_output_of_a_clip_model_is_refused_by_name(tmp_path: Path) -> None:
    from surgery.emitters.caffe import emit_caffe

    net = clip_net([LSTM_LAST, SCORES])
    with pytest.raises(ModelFormatError, match=r"'features.conv1' \(Convolution\) cannot be written to Caffe: a clip"):
        emit_caffe(net, tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- streaming step model
STEP_HEADS = {
    "lstm_last": [
        'name: "lstm" type: "LSTM" recurrent_param { num_output: 12 num_layers: 2 return_sequences: false }',
        SCORES,
    ],
    "gru_per_step": [
        'name: "gru" type: "GRU" recurrent_param { num_output: 8 }',
        'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 axis: 2 }',
    ],
    "rnn_last": ['name: "rnn" type: "RNN" recurrent_param { num_output: 8 return_sequences: false }', SCORES],
}


def _stream(run, clips: np.ndarray, state_shapes: dict[str, tuple]) -> list[dict]:
    """Feed a clip's frames one by one, from a zero state; every step's outputs."""
    states = {name: np.zeros(shape, np.float32) for name, shape in state_shapes.items()}
    steps = []
    for t in range(clips.shape[1]):
        out = run(clips[:, t], states)
        states = {name: out[name[:-1]] for name in states}  # lstm.h0 <- lstm.h
        steps.append(out)
    return steps


@pytest.mark.parametrize("head", sorted(STEP_HEADS))
def test_step_model_over_t_frames_equals_the_clip_model(head: str, tmp_path: Path) -> None:
    from surgery.emitters.step import emit_step_onnx, step_net

    net = clip_net(STEP_HEADS[head])
    step = step_net(net)
    states = {layer.outputs[0]: step.shape(layer.outputs[0]) for layer in step.input_layers()[1:]}
    clips = torch.rand(2, 6, 1, 8, 8)  # more frames than the model was built with
    with torch.no_grad():
        want = surgery.to_torch(net).eval()(clips).numpy()
    step_model = surgery.to_torch(step).eval()

    def run_torch(frame, given):
        with torch.no_grad():
            out = step_model(torch.from_numpy(frame), *(torch.from_numpy(v) for v in given.values()))
        return {name: value.numpy() for name, value in out.items()}

    session = onnx_session(emit_step_onnx(net, tmp_path / "model_step.onnx"))
    names = [o.name for o in session.get_outputs()]

    def run_onnx(frame, given):
        return dict(zip(names, session.run(names, {"x": frame, **given})))

    for run in (run_torch, run_onnx):
        steps = _stream(run, clips.numpy(), states)
        got = np.concatenate([s["scores"] for s in steps], 1) if want.ndim == 3 else steps[-1]["scores"]
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def _spec(tmp_path: Path, head: list[str], output: str = "output { pytorch { } onnx { } step { } }") -> Path:
    spec = tmp_path / "clip.prototxt"
    layers = "\n".join(f"    layer {{ {layer} }}" for layer in head)
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" weights: "{surgery.zoo.digits.WEIGHTS}" }} '
        "input_shape: [1, 1, 8, 8] }\nseed: 3\n"
        f'edit {{ sequence {{ at: "features.pool2" frames: 4\n{layers} }} }}\n'
        f'edit {{ lr {{ up_to: "features.pool2" lr_mult: 0 }} }}\n{output}\n'
    )
    return spec


def test_apply_writes_the_step_model_and_verify_checks_it(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, STEP_HEADS["lstm_last"])
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"torch", "model.onnx", "model_step.onnx", "torch_step", "report.json"} <= written
    step_model = surgery.load_torch_folder(tmp_path / "out" / "torch_step").eval()
    with torch.no_grad():
        out = step_model(torch.rand(3, 1, 8, 8), torch.zeros(3, 2, 12), torch.zeros(3, 2, 12))
    assert out["scores"].shape == (3, 11) and out["lstm.h"].shape == (3, 2, 12)
    capsys.readouterr()
    assert main(["verify", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "step model over T vs clip" in text and "torch vs source (per frame)" in text


@pytest.mark.parametrize(
    "head, culprit",
    [
        (['name: "pool" type: "TemporalPooling" pooling_param { pool: AVE }', SCORES], "pool"),
        (['name: "lstm" type: "LSTM" recurrent_param { num_output: 4 bidirectional: true }'], "lstm"),
    ],
)
def test_step_model_of_a_head_that_needs_the_whole_clip_is_refused(head, culprit, tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, head)
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"layer {culprit!r}" in err and "streaming step model cannot run it" in err and "clip.prototxt:" in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["clip.prototxt"]


def test_step_model_of_a_head_reading_several_steps_at_once_is_refused() -> None:
    from surgery.emitters.step import step_net

    net = clip_net(
        [
            'name: "gru" type: "GRU" recurrent_param { num_output: 4 }',
            'name: "scores" type: "InnerProduct" inner_product_param { num_output: 11 }',
        ]
    )  # flattens T
    with pytest.raises(ShapeError, match="cannot run one step at a time") as error:
        step_net(net)
    assert error.value.subject == "scores"


# ------------------------------------------------------------ split at the freeze boundary
def test_head_on_cached_features_has_the_clip_models_loss_and_gradients(tmp_path: Path) -> None:
    net = clip_net([LSTM_LAST, SCORES])
    backbone, head = surgery.split(net)
    assert backbone.shape(backbone.outputs[0]) == (2, 256) and head.input_layers()[0].params["shape"] == (2, 5, 256)
    clip_model, head_model = surgery.to_torch(net).train(), surgery.to_torch(head).train()
    backbone_model = surgery.to_torch(backbone).eval()
    clips, labels = torch.rand(3, 5, 1, 8, 8), torch.tensor([1, 4, 10])
    with torch.no_grad():
        cached = backbone_model(clips.flatten(0, 1)).unflatten(0, (3, 5))
    losses = []
    for model, given in ((clip_model, clips), (head_model, cached)):
        loss = nn.functional.cross_entropy(model(given), labels)
        loss.backward()
        losses.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (clip_loss, clip_grads), (head_loss, head_grads) = losses
    torch.testing.assert_close(head_loss, clip_loss, rtol=0, atol=1e-6)
    assert (
        sorted(head_grads)
        == sorted(clip_grads)
        == [
            "lstm.bias_hh_l0",
            "lstm.bias_ih_l0",
            "lstm.weight_hh_l0",
            "lstm.weight_ih_l0",
            "scores.bias",
            "scores.weight",
        ]
    )
    for name in clip_grads:
        torch.testing.assert_close(head_grads[name], clip_grads[name], rtol=0, atol=1e-6)


def test_features_command_caches_the_backbone_over_a_folder_of_clips(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, STEP_HEADS["lstm_last"], output="")
    clips = tmp_path / "clips"
    clips.mkdir()
    data = {f"clip{i}.npy": np.random.default_rng(i).random((3 + i, 1, 8, 8), dtype=np.float32) for i in range(3)}
    for name, array in data.items():
        np.save(clips / name, array)
    assert main(["features", str(spec), str(clips), "-o", str(tmp_path / "feats")]) == 0
    assert "3/3" in capsys.readouterr().err  # the progress bar
    cnn = digits_cnn()
    for name, array in data.items():
        with torch.no_grad():
            want = torch.flatten(cnn.features(torch.from_numpy(array)), 1).numpy()
        np.testing.assert_allclose(np.load(tmp_path / "feats" / name), want, rtol=0, atol=1e-6)
    np.save(clips / "bad.npy", np.zeros((2, 3, 8, 8), np.float32))
    assert main(["features", str(spec), str(clips), "-o", str(tmp_path / "feats2")]) == 1  # named, others written
    captured = capsys.readouterr()
    assert "bad.npy: it has shape (2, 3, 8, 8), expected (T, 1, 8, 8)" in captured.err
    assert "3 done, 0 skipped (already done), 1 failed" in captured.out
    assert sorted(p.name for p in (tmp_path / "feats2").glob("*.npy")) == sorted(data)


def test_split_refuses_a_backbone_that_still_trains() -> None:
    net = clip_net([LSTM_LAST, SCORES], frozen=False)
    with pytest.raises(SpecError, match=r"per-frame layer 'features.conv1' still trains"):
        surgery.split(net)


def test_a_layer_inserted_into_the_backbone_after_sequence_runs_per_frame(tmp_path: Path) -> None:
    net = clip_net([LSTM_LAST, SCORES], frozen=False)
    surgery.insert(
        net,
        "features.relu3",
        ['name: "extra" type: "Convolution" convolution_param { num_output: 64 kernel_size: 3 pad: 1 }'],
        seed=2,
    )
    assert net.layer("extra").per_frame and net.shape("extra") == (2, 5, 64, 4, 4)
    model = surgery.to_torch(net).eval()
    clips = torch.rand(2, 5, 1, 8, 8)
    cnn = digits_cnn()
    conv = _module(net, "extra", nn.Conv2d(64, 64, 3, padding=1))
    with torch.no_grad():
        frames = clips.flatten(0, 1)
        f = cnn.features.relu3(cnn.features.conv3(cnn.features.pool1(cnn.features[:6](frames))))
        f = torch.flatten(cnn.features.pool2(conv(f)), 1).unflatten(0, (2, 5))
        lstm = _module(net, "lstm", nn.LSTM(256, 12, batch_first=True))
        want = _module(net, "scores", nn.Linear(12, 11))(lstm(f)[0][:, -1])
        torch.testing.assert_close(model(clips), want, rtol=0, atol=1e-5)
    _onnx_matches(net, model, tmp_path)


def test_apply_writes_backbone_and_head_split_at_the_freeze_boundary(tmp_path: Path) -> None:
    spec = _spec(tmp_path, STEP_HEADS["lstm_last"], output="output { pytorch { } split { } }")
    assert main(["apply", str(spec), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert {"model.py", "weights.pt", "backbone.onnx"} <= {p.name for p in (out / "backbone").iterdir()}
    assert {"model.py", "weights.pt", "head.onnx"} <= {p.name for p in (out / "head").iterdir()}
    clips = torch.rand(2, 4, 1, 8, 8)
    backbone = surgery.load_torch_folder(out / "backbone").eval()
    head = surgery.load_torch_folder(out / "head").eval()
    clip_model = surgery.load_torch_folder(out / "torch").eval()
    with torch.no_grad():
        feats = backbone(clips.flatten(0, 1)).unflatten(0, (2, 4))
        torch.testing.assert_close(head(feats), clip_model(clips), rtol=0, atol=1e-6)
    session = onnx_session(out / "head" / "head.onnx")
    clips = torch.rand(3, 7, 1, 8, 8)  # N and T symbolic
    with torch.no_grad():
        feats = backbone(clips.flatten(0, 1)).unflatten(0, (3, 7))
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: feats.numpy()})[0],
        clip_model(clips).detach().numpy(),
        rtol=0,
        atol=ATOL,
    )


def test_an_eltwise_gate_in_the_backbone_after_sequence_runs_per_frame(tmp_path: Path) -> None:
    net = clip_net([LSTM_LAST, SCORES], frozen=False)
    surgery.eltwise(
        net,
        "gated",
        "features.relu3",
        layers=['name: "gate" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }'],
        near_identity=True,
    )
    for name in ("gate", "gate/sigmoid", "gated"):
        assert net.layer(name).per_frame, name
    assert net.shape("gated") == (2, 5, 64, 4, 4)
    model = surgery.to_torch(net).eval()
    assert model(torch.rand(3, 4, 1, 8, 8)).shape == (3, 11), "N and T are free in the emitted clip model"
    _onnx_matches(net, model, tmp_path)


def test_collapse_after_sequence_is_refused_by_name() -> None:
    net = clip_net([LSTM_LAST, SCORES], frozen=False)
    with pytest.raises(SpecError, match=r"'features.conv1' runs per frame of a clip model") as caught:
        surgery.collapse(net, "features.conv1", "features.conv2", "conv12", mode="FIT", samples=8)
    assert "before the `sequence` edit" in caught.value.fix
