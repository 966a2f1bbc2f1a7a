"""A spec from elsewhere runs no code silently: a torch factory outside the packages a
user trusts (torchvision, timm, transformers, surgery) and outside the spec's own folder
is refused, naming what would have run, until the user says --trust-code."""

from __future__ import annotations

from pathlib import Path

import pytest

import surgery
from surgery.cli import main
from surgery.errors import SpecError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch) -> None:
    monkeypatch.delenv("SURGERY_TRUST_CODE", raising=False)


def _spec(folder: Path, factory: str, kwargs: str = "") -> Path:
    spec = folder / "spec.prototxt"
    extra = f" kwargs: '{kwargs}'" if kwargs else ""
    spec.write_text(f'source {{ torch {{ factory: "{factory}"{extra} }} input_shape: [1, 3, 16, 16] }}\n')
    return spec


def test_os_system_in_a_spec_runs_nothing(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"
    spec = _spec(tmp_path, "os:system", f'{{"command": "touch {marker}"}}')
    for argv in (["plan", "-q", str(spec)], ["inspect", str(spec)], ["fetch", str(spec)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "would run code from the module 'os'" in err and "--trust-code" in err, err
        assert f"{spec}:1:" in err  # located at the factory's line
    assert not marker.exists()


def test_a_factory_file_outside_the_spec_folder_needs_trust(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, f"{TESTS / 'toy_nets.py'}:ToyCNN")
    assert main(["plan", "-q", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "toy_nets.py" in err and "outside the spec's folder" in err, err
    with pytest.raises(SpecError, match="outside the spec's folder"):
        surgery.plan(spec)
    assert main(["plan", "-q", "--trust-code", str(spec)]) == 0
    assert surgery.plan(spec, trust_code=True).net.layer("features.block2_conv1").type == "Convolution"


def test_a_module_outside_the_trusted_packages_needs_trust(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, "toy_nets:ToyCNN")
    assert main(["plan", "-q", str(spec)]) == 2
    assert "'toy_nets', which is not one of the packages" in capsys.readouterr().err
    assert main(["plan", "-q", "--trust-code", str(spec)]) == 0


def test_trusted_packages_and_files_under_the_spec_folder_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text((TESTS / "toy_nets.py").read_text())
    for factory in ("models/net.py:ToyCNN", "surgery.zoo:DigitsCNN", "torchvision.models:resnet18"):
        shape = {"Digits": "[1, 1, 8, 8]", "ToyCNN": "[1, 3, 16, 16]"}.get(
            factory.rpartition(":")[2][:6], "[1, 3, 32, 32]"
        )
        spec = tmp_path / "spec.prototxt"
        spec.write_text(f'source {{ torch {{ factory: "{factory}" }} input_shape: {shape} }}\n')
        assert main(["plan", "-q", str(spec)]) == 0, capsys.readouterr().err


def test_a_factory_named_on_the_command_line_is_the_users_own(capsys) -> None:
    assert main(["inspect", "toy_nets:ToyCNN", "--input-shape", "1,3,16,16"]) == 0, capsys.readouterr().err
