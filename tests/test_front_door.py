"""The front door does not wait for torch: `import surgery`, `surgery --help`, `surgery
solver`, and `inspect`, `plan` and `draw` of ONNX, Caffe and Keras models run without
importing it (each checked in a fresh interpreter); `inspect` of an ONNX file does not
import onnx either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLVER = """base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 100 momentum: 0.9 max_iter: 300"""


def _torch_imported(code: str) -> bool:
    script = f"import sys\n{code}\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1] == "True"


def test_import_surgery_loads_torch_only_when_torch_work_needs_it() -> None:
    assert not _torch_imported("import surgery; surgery.SpecError; dir(surgery)")
    assert not _torch_imported("import surgery; surgery.plan; surgery.apply; surgery.to_torch")
    assert not _torch_imported("from surgery import Net, Report")
    assert _torch_imported("import surgery; surgery.load_torch_folder")


@pytest.mark.parametrize("argv", [["--help"], ["solver", "SOLVER", "--at", "0,150"], ["features", "--help"]])
def test_cli_commands_that_do_no_torch_work_do_not_import_it(argv: list[str], tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(SOLVER)
    args = [str(solver) if a == "SOLVER" else a for a in argv]
    code = f"from surgery.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
    assert not _torch_imported(code)


def test_a_submodule_import_does_not_hide_a_public_name() -> None:
    # surgery.report is both a function (the API) and a submodule (the Report class's home)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import surgery, surgery.report\n"
        "from surgery.report import Report\n"
        "import types\n"
        "assert isinstance(surgery.report, types.FunctionType), surgery.report\n"
        "assert surgery.Report is Report\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def _cli(args: list[str], cwd: Path) -> tuple[int, set[str]]:
    """The CLI's exit code for ``args`` and which of torch / onnx the process imported."""
    code = (
        "import sys\nfrom surgery.cli import main\n"
        f"try:\n    status = main({args!r})\nexcept SystemExit as stop:\n    status = stop.code\n"
        "print(status, *sorted({'torch', 'onnx'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    status, *imported = run.stdout.strip().splitlines()[-1].split()
    return int(status) if status != "None" else 0, set(imported)


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import surgery
    from surgery.zoo import digits_cnn

    folder = tmp_path_factory.mktemp("front")
    surgery.save_onnx(surgery.load(digits_cnn(), (1, 1, 8, 8)), folder / "digits.onnx")
    (folder / "spec.prototxt").write_text(
        'source { onnx { path: "digits.onnx" } }\n'
        'edit { classifier { layer: "classifier.fc2" num_output: 3 } }\n'
        'edit { lr { up_to: "features.conv2" lr_mult: 0 } }\n'
    )
    return folder / "digits.onnx"


CAFFE = ROOT / "examples" / "caffe" / "mini_googlenet_train_val.prototxt"
KERAS = ROOT / "examples" / "keras" / "mini_vgg16.keras"


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "ONNX"],
        ["inspect", str(CAFFE)],
        ["inspect", str(KERAS)],
        ["inspect", str(ROOT / "tests" / "data" / "keras2" / "model.h5")],
        ["plan", "ONNX_SPEC"],
        ["plan", str(ROOT / "specs" / "googlenet_flowers.prototxt")],
        ["plan", str(ROOT / "specs" / "keras_vgg16_cut.prototxt")],
        ["draw", str(ROOT / "specs" / "googlenet_flowers.prototxt"), "-o", "OUT.svg"],
        ["draw", "ONNX_SPEC", "-o", "OUT.svg"],
    ],
    ids=[
        "inspect-onnx",
        "inspect-caffe",
        "inspect-keras",
        "inspect-keras2-lstm",
        "plan-onnx",
        "plan-caffe",
        "plan-keras",
        "draw-caffe",
        "draw-onnx",
    ],
)
def test_inspect_plan_and_draw_of_onnx_caffe_and_keras_do_not_import_torch(
    argv: list[str], digits_onnx: Path, tmp_path: Path
) -> None:
    names = {"ONNX": str(digits_onnx), "ONNX_SPEC": str(digits_onnx.parent / "spec.prototxt")}
    names["OUT.svg"] = str(tmp_path / "out.svg")
    status, imported = _cli([names.get(a, a) for a in argv], tmp_path)
    assert status == 0
    assert "torch" not in imported
    if argv[0] == "draw":
        assert (tmp_path / "out.svg").stat().st_size > 0
    if argv == ["inspect", "ONNX"]:
        assert imported == set()  # onnx's message classes are read without importing onnx


def test_a_torch_source_still_imports_torch(tmp_path: Path) -> None:
    status, imported = _cli(["plan", str(ROOT / "specs" / "digits_deploy_fold.prototxt")], tmp_path)
    assert status == 0 and "torch" in imported


BLOCKED = """
import importlib.abc, importlib.util, sys
from pathlib import Path

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch imported by " + sys._getframe(2).f_code.co_filename)

sys.meta_path.insert(0, NoTorch())
from surgery import api
from surgery.errors import SurgeryError

data = Path(importlib.util.find_spec("onnx").submodule_search_locations[0]) / "backend" / "test" / "data"
loaded = 0
for model in sorted(data.glob("*/*/model.onnx")) + sorted(data.glob("light/*.onnx")):
    try:
        api.load(str(model))
        loaded += 1
    except SurgeryError:
        pass  # an operator surgery refuses, by name: not this test's concern
print(loaded)
"""


def _onnx_test_data() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("onnx")
    folders = spec.submodule_search_locations if spec else None
    return bool(folders) and (Path(next(iter(folders))) / "backend" / "test" / "data" / "light").is_dir()


@pytest.mark.skipif(not _onnx_test_data(), reason="this onnx build ships no backend test data")
def test_every_onnx_backend_model_loads_without_torch() -> None:
    # torch made unimportable: every model of the onnx package's test data that surgery
    # reads is read (structure, shapes, constants) without it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", BLOCKED], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.strip() or 0) > 100


def test_apply_from_onnx_or_caffe_to_onnx_runs_without_torch_and_keeps_the_values(
    digits_onnx: Path, tmp_path: Path
) -> None:
    # weights the edits only copy go from the source file to the ONNX file without torch
    import numpy as np

    ort = pytest.importorskip("onnxruntime")
    onnx_spec = tmp_path / "onnx.prototxt"
    onnx_spec.write_text(
        f'source {{ onnx {{ path: "{digits_onnx}" }} }}\n'
        'edit { lr { up_to: "features.conv2" lr_mult: 0 } }\noutput { onnx { path: "m.onnx" } }\n'
    )
    caffe_spec = tmp_path / "caffe.prototxt"
    weights = ROOT / "examples" / "caffe" / "mini_googlenet.caffemodel"
    caffe_spec.write_text(
        f'source {{ caffe {{ prototxt: "{CAFFE}" weights: "{weights}" }} }}\n'
        'edit { lr { match: "conv*" lr_mult: 0 } }\noutput { onnx { path: "m.onnx" } }\n'
    )
    for spec, out in ((onnx_spec, tmp_path / "onnx_out"), (caffe_spec, tmp_path / "caffe_out")):
        status, imported = _cli(["apply", "-q", str(spec), "-o", str(out)], tmp_path)
        assert status == 0 and "torch" not in imported, spec.name
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    source, written = (ort.InferenceSession(str(p)) for p in (digits_onnx, tmp_path / "onnx_out" / "m.onnx"))
    want = source.run(None, {source.get_inputs()[0].name: x})[0]
    got = written.run(None, {written.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(got, want)
