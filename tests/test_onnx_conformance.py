"""The onnx package's own conformance models (``onnx/backend/test/data``: pytorch-converted,
pytorch-operator, simple; each a small model with inputs and expected outputs) go through
``surgery apply``. Each float model ends as a match (the emitted torch model and the emitted
ONNX file give the expected outputs within the backend tests' tolerance) or as a refusal
listed in ``onnx_conformance_cases.py``: one error, located at the spec, naming the
operator. Never a traceback, never other numbers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx_conformance_cases import PEER_ONLY, REFUSED

import surgery
from surgery.errors import SurgeryError

ort = pytest.importorskip("onnxruntime")
DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"
FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")
RTOL, ATOL = 1e-3, 1e-5  # onnx's backend tests compare with rtol 1e-3


def _tensors(folder: Path, kind: str) -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(path)) for path in sorted(folder.glob(f"{kind}_*.pb"))]


def _cases() -> list[str]:
    """Every model with float inputs and outputs, as ``folder/name``."""
    found = []
    for folder in FOLDERS:
        for case in sorted((DATA / folder).glob("*")):
            sets = sorted(case.glob("test_data_set_*"))
            if sets and all(a.dtype == np.float32 for a in _tensors(sets[0], "input") + _tensors(sets[0], "output")):
                found.append(f"{folder}/{case.name}")
    return found


CASES = _cases() if DATA.is_dir() else []


def _close(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True))


@pytest.mark.parametrize("case", CASES)
def test_conformance_model_matches_or_is_refused_by_name(case: str, tmp_path: Path) -> None:
    folder = DATA / case
    spec = tmp_path / "spec.prototxt"
    spec.write_text(f'source {{ onnx {{ path: "{folder / "model.onnx"}" }} }}\n')
    try:
        result = surgery.apply(spec, tmp_path / "out")
    except SurgeryError as error:
        assert case in REFUSED, f"refused, and not listed in onnx_conformance_cases.py: {error}"
        operator, _ = REFUSED[case]
        text = str(error)
        assert text.startswith(f"{spec}:"), "located at the spec"
        assert re.search(rf"\b{operator}\b", text), f"names the operator {operator}: {text}"
        assert not (tmp_path / "out").exists()
        return
    assert case not in REFUSED, "it matches now: take it off the list in onnx_conformance_cases.py"
    data = sorted(folder.glob("test_data_set_*"))[0]
    inputs, expected = _tensors(data, "input"), _tensors(data, "output")
    model = surgery.load_torch_folder(result.out_dir / "torch").eval()
    with torch.no_grad():
        out = model(*[torch.from_numpy(np.array(x)) for x in inputs])
    got = [out] if isinstance(out, torch.Tensor) else list(out.values()) if isinstance(out, dict) else list(out)
    assert len(got) == len(expected) and all(_close(g.numpy(), e) for g, e in zip(got, expected)), "torch"
    session = ort.InferenceSession(str(result.out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    assert all(_close(g, e) for g, e in zip(session.run(None, feeds), expected)), "ONNX"


def test_listed_refusals_are_conformance_models() -> None:
    assert set(REFUSED) <= set(CASES)


def test_readme_states_the_counts() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    matched = len(CASES) - len(REFUSED)
    assert f"{matched} of the {len(CASES)} float conformance models match, {len(REFUSED)} are refused" in readme


def _surgery_matches(case: str) -> bool:
    folder = DATA / case
    data = sorted(folder.glob("test_data_set_*"))[0]
    inputs, expected = _tensors(data, "input"), _tensors(data, "output")
    try:
        model = surgery.to_torch(surgery.load(folder / "model.onnx")).eval()
    except SurgeryError:
        return False
    with torch.no_grad():
        out = model(*[torch.from_numpy(np.array(x)) for x in inputs])
    got = [out] if isinstance(out, torch.Tensor) else list(out.values()) if isinstance(out, dict) else list(out)
    return len(got) == len(expected) and all(_close(g.numpy(), e) for g, e in zip(got, expected))


def _peer_matches(case: str) -> bool:
    """Whether onnx2torch converts the model to a module that gives the expected outputs."""
    from onnx2torch import convert

    folder = DATA / case
    data = sorted(folder.glob("test_data_set_*"))[0]
    inputs, expected = _tensors(data, "input"), _tensors(data, "output")
    try:
        model = convert(onnx.load(folder / "model.onnx")).eval()
        with torch.no_grad():
            out = model(*[torch.from_numpy(np.array(x)) for x in inputs])
    except Exception:  # noqa: BLE001  (the peer raises what it raises: it does not convert this model)
        return False
    got = [out] if isinstance(out, torch.Tensor) else list(out)
    return len(got) == len(expected) and all(_close(g.numpy(), e) for g, e in zip(got, expected))


def test_side_by_side_with_onnx2torch() -> None:
    """Every conformance model the ONNX-to-PyTorch peer converts to the expected outputs,
    surgery converts too, but for the gap listed (with what it would take) in PEER_ONLY."""
    pytest.importorskip("onnx2torch")
    peer = {case for case in CASES if _peer_matches(case)}
    ours = {case for case in CASES if _surgery_matches(case)}
    assert peer - ours == set(PEER_ONLY), "the gap to the peer changed: update PEER_ONLY"
    assert len(ours) > len(peer)
