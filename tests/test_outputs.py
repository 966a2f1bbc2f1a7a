"""The output table: every field of the schema's ``output { }`` block has a row, and
every path any row writes is checked against hostile values before anything is built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import surgery
from surgery import outputs
from surgery.cli import main
from surgery.errors import SpecError
from surgery.spec import spec_class

EDITS = 'edit { classifier { layer: "classifier.fc2" rename: "head" num_output: 3 } }\n'


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _path_fields() -> list[tuple[str, str]]:
    """(output kind, string field of its message) for every path the schema lets a spec set."""
    fields = []
    for kind in outputs.OUTPUT_KINDS:
        message = spec_class("Output").DESCRIPTOR.fields_by_name[kind.field].message_type
        fields += [
            (kind.field, f.name) for f in message.fields if f.type == f.TYPE_STRING and not f.is_repeated
        ]  # not dynamic_axis
    return fields


def test_every_output_field_has_a_row() -> None:
    assert sorted(outputs.output_fields()) == sorted(kind.field for kind in outputs.OUTPUT_KINDS)
    assert len(_path_fields()) >= 8  # pytorch, onnx, caffe x2, step x2, split x2, and any added later


def test_each_row_declares_the_paths_of_its_fields() -> None:
    """A row's declared paths change with each of its string fields: none is ignored."""
    for kind_name, field in _path_fields():
        kind = next(k for k in outputs.OUTPUT_KINDS if k.field == kind_name)
        message = getattr(spec_class("Output")(), kind_name)
        before = {p.path for p in kind.paths(message)}
        setattr(message, field, "renamed_by_test")
        after = {p.path for p in kind.paths(message)}
        assert before != after and any("renamed_by_test" in p for p in after), (kind_name, field)


HOSTILE = [
    ("../escaped", "leaves the output folder"),
    ("a/../../escaped", "leaves the output folder"),
    ("ABSOLUTE/escaped", "is absolute"),
    ("", "is empty"),
    (".", "leaves the output folder"),
    ("report.json", "would replace the run's own"),
    ("report.html", "would replace the run's own"),
    (".surgery-output", "would replace the run's own"),
]


@pytest.mark.parametrize("kind,field", _path_fields(), ids=lambda v: str(v))
@pytest.mark.parametrize("value,message", HOSTILE, ids=[h[0] or "empty" for h in HOSTILE])
def test_hostile_output_paths_are_refused(
    kind: str, field: str, value: str, message: str, toy_spec, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    spec = toy_spec(EDITS + f'output {{ {kind} {{ {field}: "{value.replace("ABSOLUTE", str(outside))}" }} }}')
    sub = tmp_path / "sub"
    before = _tree(tmp_path)
    with pytest.raises(SpecError) as error:
        surgery.apply(spec, sub / "out")
    assert message in str(error.value), str(error.value)
    assert str(error.value).startswith(f"{spec}:5:"), "located at the output block"
    assert f"output.{kind}.{field}" in str(error.value), "names the spec's field"
    assert _tree(tmp_path) == before and not outside.exists() and not sub.exists()


@pytest.mark.parametrize("kind,field", _path_fields(), ids=lambda v: str(v))
def test_outputs_may_not_share_a_path(kind: str, field: str, toy_spec, tmp_path: Path) -> None:
    """Any path field set to where the ONNX output goes (or to a folder holding it) clashes."""
    other = "pytorch" if kind == "onnx" else "onnx"
    clash = {"onnx": 'onnx { path: "same" }', "pytorch": 'pytorch { path: "same" }'}[other]
    spec = toy_spec(EDITS + f'output {{ {clash} {kind} {{ {field}: "Same" }} }}')
    with pytest.raises(SpecError, match="collides with"):
        surgery.apply(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_split_escape_is_refused(toy_spec, tmp_path: Path) -> None:
    """A spec under sub/ whose split backbone named '../escaped_backbone' once wrote beside -o."""
    (tmp_path / "sub").mkdir()
    spec = toy_spec(EDITS + 'output { split { backbone: "../escaped_backbone" } }', name="sub/spec.prototxt")
    assert main(["apply", str(spec), "-o", str(tmp_path / "sub" / "out"), "-q"]) == 2
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["spec.prototxt"]


def test_symlinks_in_an_old_output_are_not_followed(toy_spec, tmp_path: Path) -> None:
    """--force replaces an old output holding a symlink to a folder elsewhere: the link
    goes, what it points to stays; -o under a symlinked parent lands in the link's target."""
    spec = toy_spec(EDITS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    out = tmp_path / "link" / "out"
    surgery.apply(spec, out)
    os.symlink(elsewhere, out / "torch2")
    surgery.apply(spec, out, force=True)
    assert (tmp_path / "real" / "out" / "model.onnx").is_file() and not (out / "torch2").exists()
    assert _tree(elsewhere) == {"keep.txt": b"mine"}


def test_space_estimate_counts_every_selected_kind(toy_spec, tmp_path: Path, monkeypatch) -> None:
    """The free-space check sums each selected row's weight copies."""
    seen = []
    monkeypatch.setattr(outputs, "check_free_space", lambda net, copies, folder: seen.append(copies))
    surgery.apply(toy_spec(EDITS + "output { pytorch { } onnx { } caffe { } }"), tmp_path / "out")
    assert seen == [3]
