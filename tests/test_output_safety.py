"""apply is safe with the user's files: outputs land only inside -o, one output never
replaces another, -o never holds an input, only a previous output is replaced, concurrent
and killed runs leave -o either as it was or complete, the umask is honoured, every
multiplier is checked, and report.json is strict JSON recording every file's sha256."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import surgery
from surgery.cli import main
from surgery.errors import ModelFormatError, SpecError, SurgeryError
from surgery.interrupts import StopOnSignal, checkpoint

EDITS = 'edit { classifier { layer: "classifier.fc2" rename: "head" num_output: 3 } }\n'


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "surgery.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _complete(out: Path) -> dict:
    """The report of a complete output folder: every file it records is there, as recorded."""
    report = json.loads((out / "report.json").read_text())
    assert (out / ".surgery-output").is_file()
    for entry in report["files"]["outputs"]:
        data = (out / entry["path"]).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size"]), entry["path"]
    return report


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------- 3, 4: output paths
@pytest.mark.parametrize(
    "output,message",
    [
        ('output { pytorch { path: "../escaped" } }', "leaves the output folder"),
        ('output { pytorch { path: "torch/../../escaped" } }', "leaves the output folder"),
        ('output { onnx { path: "ABSOLUTE/x.onnx" } }', "is absolute"),
        ('output { caffe { prototxt: "../deploy.prototxt" } }', "leaves the output folder"),
        ('output { caffe { weights: "ABSOLUTE/w.caffemodel" } }', "is absolute"),
        ('output { onnx { path: "report.json" } }', "would replace the run's own report.json"),
        ('output { onnx { path: ".surgery-output" } }', "would replace the run's own"),
        ('output { pytorch { } onnx { path: "torch/model.py" } }', "collides with"),
        ('output { pytorch { } onnx { path: "torch" } }', "collides with"),
        ('output { onnx { path: "Model.onnx" } caffe { prototxt: "model.onnx" } }', "collides with"),
        ('output { onnx { } caffe { weights: "model.onnx.data" } }', "collides with"),
        ('output { onnx { path: "" } }', "is empty"),
        ('output { pytorch { path: "" } }', "is empty"),
        ('output { pytorch { path: "." } }', "leaves the output folder"),
    ],
)
def test_output_paths_stay_inside_and_apart(output: str, message: str, toy_spec, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    spec = toy_spec(EDITS + output.replace("ABSOLUTE", str(outside)))
    before = _tree(tmp_path)
    with pytest.raises(SpecError) as error:
        surgery.apply(spec, tmp_path / "out")
    assert message in str(error.value)
    assert str(error.value).startswith(f"{spec}:5:"), "located at the output block"
    assert _tree(tmp_path) == before and not outside.exists() and not (tmp_path / "escaped").exists()
    assert main(["apply", str(spec), "-o", str(tmp_path / "out"), "-q"]) == 2


def test_onnx_external_data_may_not_leave_the_model_folder(tmp_path: Path) -> None:
    import onnx
    from toy_nets import toy_cnn

    from surgery.emitters.onnx_model import emit_onnx
    from surgery.importers.onnx_model import import_onnx

    path = emit_onnx(surgery.load(toy_cnn(), (2, 3, 16, 16)), tmp_path / "m" / "m.onnx", external_data=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(1 << 16))
    for location in ("../secret.bin", str(secret)):
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(tmp_path / "m" / "evil.onnx"))
        with pytest.raises(ModelFormatError, match=r"outside the model's folder|absolute path"):
            import_onnx(tmp_path / "m" / "evil.onnx")


# ------------------------------------------------------------- 5: inputs and --force
def test_force_never_deletes_inputs(toy_spec, tmp_path: Path, toy_weights: Path) -> None:
    spec = toy_spec(EDITS)
    (tmp_path / "notes.txt").write_text("my notes")
    before = _tree(tmp_path)
    for flag in ("--force", "--force-any"):
        for out in (tmp_path, tmp_path.parent):  # -o is the spec's folder, or holds it
            assert main(["apply", str(spec), "-o", str(out), flag, "-q"]) == 2
            assert _tree(tmp_path) == before, "inputs untouched"
    with pytest.raises(SurgeryError, match="holds an input of this run"):
        surgery.apply(spec, tmp_path, force_any=True)
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        with pytest.raises(SurgeryError, match="holds an input of this run"):
            surgery.apply(spec, link, force_any=True)
    finally:
        link.unlink()
    assert _tree(tmp_path) == before


def test_force_replaces_only_previous_outputs(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(SurgeryError, match="not an output of surgery") as error:
        surgery.apply(spec, mine, force=True)
    assert "force_any=True" in str(error.value) and (mine / "thesis.tex").exists()
    afile = tmp_path / "afile"
    afile.write_text("a file")
    with pytest.raises(SurgeryError, match="not an output of surgery"):
        surgery.apply(spec, afile, force=True)
    surgery.apply(spec, afile, force_any=True)  # a file swapped for the folder
    _complete(afile)
    surgery.apply(spec, tmp_path / "out")
    (tmp_path / "out" / "extra.txt").write_text("x")
    surgery.apply(spec, tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "extra.txt").exists()
    _complete(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    surgery.apply(spec, empty)  # an empty folder needs no --force
    _complete(empty)
    assert not _leftovers(tmp_path)
    for bad in ("", "/"):
        with pytest.raises(SurgeryError, match="cannot be an output folder"):
            surgery.apply(spec, bad, force_any=True)


# --------------------------------------------------------------- 6: concurrent runs
def test_concurrent_applies_one_wins_the_others_fail_cleanly(toy_spec, tmp_path: Path) -> None:
    specs = [toy_spec(EDITS, name=f"spec{i}.prototxt", seed=i) for i in range(3)]
    out = tmp_path / "out"
    for extra in ([], ["--force"]):
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "surgery.cli", "apply", str(spec), "-o", str(out), "-q", *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
            for spec in specs
        ]
        results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
        for run in runs:
            run.stdout.close()
            run.stderr.close()
        codes = sorted(code for code, _ in results)
        assert all(code in (0, 2) for code in codes), results
        assert all("Traceback" not in err for _, err in results)
        if not extra:
            assert codes == [0, 2, 2], results  # one new -o, two clean refusals
        else:
            assert 0 in codes, results  # each --force run replaces what it found, or sees it changed
            assert all("changed while this apply ran" in err for code, err in results if code == 2), results
        report = _complete(out)
        assert int(report["spec"]["seed"]) in range(3)
        assert not _leftovers(tmp_path)


# ------------------------------------------------------------ 7: killed at any moment
BIG_NET = """
import torch
from torch import nn

def build():
    return nn.Sequential(*[nn.Linear(768, 768) for _ in range(8)])
"""


def _big_spec(folder: Path, seed: int) -> Path:
    (folder / "big.py").write_text(BIG_NET)
    spec = folder / f"big{seed}.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "big.py:build" }} input_shape: [2, 768] }}\nseed: {seed}\n'
        f'edit {{ classifier {{ layer: "7" num_output: 10 }} }}\n'
    )
    return spec


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["KILL", "TERM", "INT"])
@pytest.mark.parametrize(
    "moment",
    [
        pytest.param(("writing the PyTorch", 0.0), id="torch"),
        pytest.param(("writing the PyTorch", 0.15), id="torch_later", marks=pytest.mark.slow),
        pytest.param(("writing model.onnx", 0.05), id="onnx", marks=pytest.mark.slow),
        pytest.param(("moving the outputs", 0.0), id="publish"),
        # after the rename: the run winds down, prints, and the interpreter shuts down
        pytest.param(("moving the outputs", 0.03), id="winding_down"),
        pytest.param(("moving the outputs", 0.3), id="shutdown", marks=pytest.mark.slow),
    ],
)
def test_killed_apply_leaves_old_or_new_output(sig: int, moment: tuple[str, float], tmp_path: Path) -> None:
    out = tmp_path / "out"
    surgery.apply(_big_spec(tmp_path, 1), out)
    old = _tree(out)
    run = subprocess.Popen(
        [sys.executable, "-m", "surgery.cli", "apply", str(_big_spec(tmp_path, 2)), "-o", str(out), "--force"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    line, delay = moment
    for text in run.stderr:
        if line in text:
            break
    time.sleep(delay)
    run.send_signal(sig)
    said = run.stderr.read()  # what the run printed after the signal, for the assertions' messages
    code = run.wait(timeout=120)
    run.stderr.close()
    now = _tree(out)
    _complete(out)
    assert now == old or json.loads(now["report.json"])["spec"]["seed"] == "2", "old output or the new one"
    if sig != signal.SIGKILL:
        # 0: the signal came after the run had finished (the new output is complete);
        # 128 + the signal: unwound like Ctrl-C, whatever the moment, never a traceback
        assert code in (0, 128 + sig), f"exit {code}; the run said:\n{said}"
        assert code == 128 + sig or now != old, "exit 0 means the new output is in place"
        assert not _leftovers(tmp_path), "SIGTERM and SIGINT clean up like Ctrl-C"
    surgery.apply(_big_spec(tmp_path, 3), out, force=True)  # a later apply removes what a kill left
    assert not _leftovers(tmp_path)
    assert json.loads((out / "report.json").read_text())["spec"]["seed"] == "3"


class _SignallingFile:
    """A file object that raises a real signal at its ``at``-th write: a Ctrl-C landing
    while torch.save's C++ writer calls back into Python."""

    def __init__(self, path: Path, signum: int, at: int) -> None:
        self.file, self.signum, self.at, self.writes = path.open("wb"), signum, at, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.at:
            signal.raise_signal(self.signum)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_inside_torch_save_stops_the_run_at_the_next_checkpoint(signum: int, tmp_path: Path) -> None:
    """A KeyboardInterrupt raised inside torch.save's C++ writer comes out as
    ``RuntimeError: unexpected pos`` (and inside a native module's import, as an abort):
    under the CLI's StopOnSignal the signal is recorded, the file is written whole, and
    the run stops at its next checkpoint."""
    state = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job
    stop = StopOnSignal()
    try:
        stop.arm()
        target = _SignallingFile(tmp_path / "w.pt", signum, at=3)
        torch.save(state, target)
        target.file.close()
        assert stop.signum == signum
        with pytest.raises(KeyboardInterrupt):
            checkpoint()
        checkpoint()  # once only: the unwinding is not interrupted again
    finally:
        stop.close(ignore=False)
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())
    assert signal.getsignal(signal.SIGINT) == before


def test_signal_handlers_are_put_back_after_main(toy_spec, tmp_path: Path) -> None:
    """main() called in-process leaves the caller's handlers as they were."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["plan", str(toy_spec(EDITS)), "-q"]) == 0
    assert {s: signal.getsignal(s) for s in before} == before


def test_stale_staging_is_cleaned_and_a_stranded_old_output_restored(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    surgery.apply(spec, tmp_path / "prev")
    stale = tmp_path / f".out.partial-{dead.pid}-0123abcd"
    stale.mkdir()
    (stale / ".surgery-output").write_text("")
    (stale / "weights.pt").write_bytes(b"x" * 1000)
    alive = tmp_path / f".out.partial-{os.getpid()}-0123abcd"  # a live run's staging stays
    alive.mkdir()
    (alive / ".surgery-output").write_text("")
    foreign = tmp_path / f".out.partial-{dead.pid}-89abcdef"  # no marker: not ours, left alone
    foreign.mkdir()
    # A swap killed between its two renames (where renameat2 is missing): -o is gone and
    # the old output waits beside it; the next run puts it back before anything else.
    (tmp_path / "prev").rename(tmp_path / f".out.old-{dead.pid}-00000000")
    with pytest.raises(SurgeryError, match="already exists"):
        surgery.apply(spec, tmp_path / "out")
    assert not stale.exists() and alive.exists() and foreign.exists()
    _complete(tmp_path / "out")
    assert not (tmp_path / f".out.old-{dead.pid}-00000000").exists()


def test_swap_without_renameat2(toy_spec, tmp_path: Path, monkeypatch) -> None:
    """Where renameat2 is missing, the fallback (two renames under the lock) still
    replaces and refuses like the atomic path."""
    from surgery import output_folder

    monkeypatch.setattr(output_folder, "_renameat2", lambda source, target, flags: False)
    spec = toy_spec(EDITS)
    surgery.apply(spec, tmp_path / "out")
    surgery.apply(toy_spec(EDITS, name="s2.prototxt", seed=9), tmp_path / "out", force=True)
    assert _complete(tmp_path / "out")["spec"]["seed"] == "9"
    assert not _leftovers(tmp_path)


# ---------------------------------------------------------------------- 8: umask
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(umask: int, toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS + "output { pytorch { } onnx { external_data: true } caffe { } }")
    previous = os.umask(umask)
    try:
        surgery.apply(spec, tmp_path / "out")
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert {"out/model.onnx", "out/model.onnx.data", "out/deploy.prototxt", "out/weights.caffemodel"} <= set(modes)
    for name, mode in modes.items():
        wanted = (0o777 if (tmp_path / name).is_dir() else 0o666) & ~umask
        assert mode == wanted, f"{name}: {oct(mode)} != {oct(wanted)}"


# ------------------------------------------------------------ 10: multipliers, JSON
@pytest.mark.parametrize(
    "edit",
    [
        'edit { lr { match: "features.*" lr_mult: nan } }',
        'edit { lr { match: "features.*" decay_mult: inf } }',
        'edit { lr { match: "features.*" lr_mult: -1 } }',
        'edit { append { layer { name: "fc" type: "InnerProduct" inner_product_param { num_output: 2 } '
        "param { lr_mult: -1 } } } }",
        'edit { append { layer { name: "fc" type: "InnerProduct" inner_product_param { num_output: 2 } '
        "param { lr_mult: 1 } param { decay_mult: nan } } } }",
        'edit { classifier { layer: "classifier.fc2" num_output: 2 } } '
        'edit { replace { layer: "classifier.fc2" by { name: "classifier.fc2" type: "InnerProduct" '
        "inner_product_param { num_output: 2 } param { lr_mult: inf } } } }",
    ],
)
def test_every_multiplier_is_finite_and_not_negative(edit: str, toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(edit)
    with pytest.raises(SpecError, match="must be a finite number >= 0") as error:
        surgery.apply(spec, tmp_path / "out")
    assert str(error.value).startswith(f"{spec}:4:")
    assert not (tmp_path / "out").exists()


def test_json_spec_nan_multiplier_is_refused(tmp_path: Path, toy_weights: Path) -> None:
    tests = Path(__file__).resolve().parent
    spec = tmp_path / "s.json"
    spec.write_text(
        '{"source": {"torch": {"factory": "%s:ToyCNN", "weights": "toy.pt"}, "input_shape": [2, 3, 16, 16]},'
        ' "edit": [{"lr": {"match": ["features.*"], "lr_mult": NaN}}]}' % (tests / "toy_nets.py")
    )
    with pytest.raises(SpecError, match="finite number"):
        surgery.apply(spec, tmp_path / "out")


def test_caffe_param_multipliers_are_checked(tmp_path: Path) -> None:
    from surgery.importers.caffe import import_caffe

    prototxt = tmp_path / "n.prototxt"
    prototxt.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" param { lr_mult: nan } '
        "inner_product_param { num_output: 2 } }\n"
    )
    with pytest.raises(SpecError, match="lr_mult of layer 'fc' must be a finite number"):
        import_caffe(prototxt)


def test_report_is_strict_json() -> None:
    from surgery.report import Report

    row = {"name": "a", "params": 0, "trainable": False, "value": float("nan"), "limits": [float("inf"), -float("inf")]}
    text = Report("n", [row]).to_json()
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in report.json"))
    assert parsed["layers"][0]["value"] == "nan" and parsed["layers"][0]["limits"] == ["inf", "-inf"]


# ----------------------------------------------------------------- 11: file hashes
def test_report_records_every_input_and_output(toy_spec, tmp_path: Path, toy_weights: Path) -> None:
    spec = toy_spec(EDITS + "output { pytorch { } onnx { external_data: true } caffe { } }")
    surgery.apply(spec, tmp_path / "out")
    report = _complete(tmp_path / "out")
    inputs = {entry["path"]: entry for entry in report["files"]["inputs"]}
    for name in ("spec.prototxt", "toy.pt", "toy_nets.py"):
        path = spec.parent / name if name != "toy_nets.py" else Path(__file__).parent / name
        key = name if name != "toy_nets.py" else str(path.resolve())
        data = path.read_bytes()
        assert inputs[key] == {"path": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    outputs = {entry["path"] for entry in report["files"]["outputs"]}
    assert outputs == {
        "torch/model.py",
        "torch/weights.pt",
        "model.onnx",
        "model.onnx.data",
        "deploy.prototxt",
        "weights.caffemodel",
        "report.html",
    }


def test_report_records_onnx_and_caffe_inputs(tmp_path: Path) -> None:
    from caffe_nets import rng_weights, write_net
    from toy_nets import toy_cnn

    from surgery.emitters.onnx_model import emit_onnx

    emit_onnx(surgery.load(toy_cnn(), (2, 3, 16, 16)), tmp_path / "src.onnx", external_data=True)
    (tmp_path / "onnx.prototxt").write_text('source { onnx { path: "src.onnx" } }\nseed: 1\n')
    surgery.apply(tmp_path / "onnx.prototxt", tmp_path / "a")
    names = {e["path"] for e in _complete(tmp_path / "a")["files"]["inputs"]}
    assert names == {"onnx.prototxt", "src.onnx", "src.onnx.data"}
    w = rng_weights()
    write_net(
        tmp_path,
        "net",
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n',
        {"fc": [w(2, 4), w(2)]},
    )
    (tmp_path / "caffe.prototxt").write_text(
        'source { caffe { prototxt: "net.prototxt" weights: "net.caffemodel" } }\nseed: 1\n'
    )
    surgery.apply(tmp_path / "caffe.prototxt", tmp_path / "b")
    names = {e["path"] for e in _complete(tmp_path / "b")["files"]["inputs"]}
    assert names == {"caffe.prototxt", "net.prototxt", "net.caffemodel"}


def test_tensors_saved_through_the_hashing_writer_load_back(tmp_path: Path) -> None:
    from surgery.emitters.files import FileLog, output_file

    state = {"big": torch.randn(600, 1000), "small": torch.arange(5)}
    log = FileLog()
    with output_file(tmp_path / "w.pt", log) as out:
        torch.save(state, out)
    data = (tmp_path / "w.pt").read_bytes()
    assert log.files[tmp_path / "w.pt"] == (hashlib.sha256(data).hexdigest(), len(data))
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


# -------------------------------------------------- 9: seeded sources and fits
_SMALL_NET = """
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))
"""
_RANDOM_INIT_SPEC = """source {{ torch {{ factory: "small.py:build" }} input_shape: [2, 3, 8, 8] }}
seed: {seed}
edit {{ collapse {{ first: "0" second: "2" name: "fused" mode: FIT kernel_size: 5 samples: 8 }} }}
output {{ pytorch {{ }} }}
"""


def test_random_init_factory_and_fit_are_seeded_by_the_spec(tmp_path: Path) -> None:
    """A factory without weights initialises from torch's generator: the spec's seed
    makes that (and the FIT) repeat byte for byte across processes, and the caller's
    generators are left where they were."""
    (tmp_path / "small.py").write_text(_SMALL_NET)
    for seed in (1, 2):
        (tmp_path / f"s{seed}.prototxt").write_text(_RANDOM_INIT_SPEC.format(seed=seed))
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run = _cli("apply", str(tmp_path / f"s{seed}.prototxt"), "-o", str(tmp_path / name), "-q", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    a, c = (torch.load(tmp_path / n / "torch" / "weights.pt", weights_only=True) for n in ("a", "c"))
    assert not torch.equal(a["4.weight"], c["4.weight"]), "the seed drives the factory's init"
    assert not torch.equal(a["fused.weight"], c["fused.weight"])
    import random

    import numpy as np

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    surgery.plan(tmp_path / "s1.prototxt")
    surgery.apply(tmp_path / "s1.prototxt", tmp_path / "d")
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_caffe_layers_without_weights_use_the_spec_seed(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n'
    )
    weights = {}
    for seed in (5, 6):
        spec = tmp_path / f"s{seed}.prototxt"
        spec.write_text(
            f'source {{ caffe {{ prototxt: "net.prototxt" }} }}\nseed: {seed}\noutput {{ pytorch {{ }} }}\n'
        )
        result = surgery.apply(spec, tmp_path / f"out{seed}")
        row = next(r for r in result.report.rows if r["name"] == "fc")
        assert f"seed {seed}" in row["origin"] and "seed 0" not in row["origin"]
        weights[seed] = torch.load(tmp_path / f"out{seed}" / "torch" / "weights.pt", weights_only=True)["fc.weight"]
    assert not torch.equal(weights[5], weights[6])
