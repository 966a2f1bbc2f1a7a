"""Verify on a GPU: onnxruntime's CUDA provider pinned to fp32 (TF32 off) unless asked,
the torch side on ``--device cuda`` at fp32 with the caller's settings restored, and a
clear error when CUDA is asked for and absent.

Without a GPU, a stand-in for onnxruntime-gpu (a session class that records what it
was given and runs the real CPU session) checks the provider options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from surgery.cli import main  # noqa: E402
from surgery.verify import CUDA_FP32_OPTIONS, full_fp32  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "digits_parity.prototxt"
has_cuda = torch.cuda.is_available()


class StandInCudaSession:
    """onnxruntime-gpu's InferenceSession as far as verify can tell: it takes the CUDA
    provider (recording its options) and runs the model on the real CPU session."""

    made: ClassVar[list[list]] = []
    real = ort.InferenceSession

    def __init__(self, model, options=None, providers=None, **kwargs) -> None:
        self.providers = list(providers or [])
        StandInCudaSession.made.append(self.providers)
        self._session = self.real(model, options, providers=["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        names = [p[0] if isinstance(p, tuple) else p for p in self.providers]
        return names or ["CPUExecutionProvider"]

    def __getattr__(self, name: str):  # run, get_inputs, get_outputs: the real session's
        return getattr(self._session, name)


@pytest.fixture
def stand_in_cuda(monkeypatch) -> list[list]:
    StandInCudaSession.made = []
    monkeypatch.setattr(ort, "InferenceSession", StandInCudaSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return StandInCudaSession.made


def _cuda_options(made: list[list]) -> list[dict]:
    return [
        dict(p[1]) for providers in made for p in providers if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider"
    ]


def test_verify_pins_the_cuda_provider_to_fp32(stand_in_cuda, capsys) -> None:
    assert main(["verify", str(SPEC), "-q"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime provider: CUDAExecutionProvider (fp32, TF32 off)" in out
    options = _cuda_options(stand_in_cuda)
    assert options and all(o == CUDA_FP32_OPTIONS == {"use_tf32": "0"} for o in options)


def test_tf32_on_request_says_so(stand_in_cuda, capsys) -> None:
    main(["verify", str(SPEC), "-q", "--tf32"])
    out = capsys.readouterr().out
    assert "CUDAExecutionProvider (TF32 on" in out and "compares a TF32 run" in out
    assert all("use_tf32" not in o for o in _cuda_options(stand_in_cuda))


def test_apply_verify_reports_the_provider(stand_in_cuda, tmp_path: Path) -> None:
    assert main(["apply", str(SPEC), "-o", str(tmp_path / "out"), "-q", "--verify"]) == 0
    figures = json.loads((tmp_path / "out" / "report.json").read_text())["verify"]
    assert figures["provider"] == "CUDAExecutionProvider (fp32, TF32 off)" and figures["onnx_tf32"] is False
    assert "TF32 off" in (tmp_path / "out" / "report.html").read_text()


def test_verify_restores_the_callers_precision_settings() -> None:
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        with full_fp32():
            assert not torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


@pytest.mark.skipif(has_cuda, reason="checks the error where no GPU is")
def test_device_cuda_without_a_gpu_is_a_clear_error(capsys, tmp_path: Path) -> None:
    assert main(["verify", str(SPEC), "-q", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "asks for a CUDA GPU" in err and "fix:" in err and "Traceback" not in err
    assert main(["apply", str(SPEC), "-o", str(tmp_path / "out"), "-q", "--verify", "--device", "cuda"]) == 2
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_unknown_device_is_a_clear_error(capsys) -> None:
    assert main(["verify", str(SPEC), "-q", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda, reason="needs a CUDA GPU")
def test_verify_on_the_gpu_at_fp32(capsys) -> None:
    torch.backends.cudnn.allow_tf32 = True  # the user's setting: verify turns it off inside, back after
    try:
        assert main(["verify", str(SPEC), "-q", "--device", "cuda"]) == 0
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = False
    out = capsys.readouterr().out
    assert "torch device: cuda" in out and "verified: all within tolerance" in out


def test_gpu_check_runs_its_checks_on_the_cpu() -> None:
    """bench/gpu_check.py's dry run on the CPU: the same checks, one spec, exit 0."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--only", "digits_parity"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("digits_parity"))
    assert "FAIL" not in row and "10 frozen same, 2/2 new moved" in row
    assert run.stdout.rstrip().splitlines()[-1].startswith("0 failed")
