"""Hostile specs: every one ends in exit 0 or in one error at the spec's file:line:col
with exit 2; never a traceback. Parameter ranges are checked by each layer type, sizes
are estimated from shapes before anything is allocated, YAML is bounded before parsing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from surgery.cli import main

TESTS = Path(__file__).resolve().parent
NETS = TESTS / "hostile_nets.py"


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _located(err: str, spec: Path) -> re.Match | None:
    return re.match(rf"error: {re.escape(str(spec))}:(\d+):(\d+): ", err)


def _insert(layer: str) -> str:
    return f'edit {{ insert {{ after: "features.block2_pool" layer {{ {layer} }} }} }}'


def _conv(params: str, extra: str = "") -> str:
    return _insert(f'name: "c" type: "Convolution" convolution_param {{ num_output: 16 {params} {extra} }}')


# (edits on ToyCNN, the message, the text the location must point at)
TOY_CASES = {
    "kernel 0": (_conv("kernel_size: 0"), "kernel_size must be at least 1", '"c"'),
    "stride 0": (_conv("kernel_size: 1 stride: 0"), "stride must be at least 1", '"c"'),
    "group 0": (_conv("kernel_size: 1 group: 0"), "group must be at least 1", '"c"'),
    "dilation 0": (_conv("kernel_size: 3 dilation: 0"), "dilation must be at least 1", '"c"'),
    "num_output 0": (
        _insert('name: "c" type: "Convolution" convolution_param { num_output: 0 kernel_size: 1 }'),
        "num_output must be at least 1",
        '"c"',
    ),
    "dropout ratio 2": (
        _insert('name: "d" type: "Dropout" dropout_param { dropout_ratio: 2 }'),
        "dropout_ratio must be in [0, 1)",
        '"d"',
    ),
    "negative std": (
        _conv("kernel_size: 1", 'weight_filler { type: "gaussian" std: -1 }'),
        "std must not be negative",
        '"gaussian"',
    ),
    "NaN std": (
        _conv("kernel_size: 1", 'weight_filler { type: "gaussian" std: nan }'),
        "std must be a finite number",
        '"gaussian"',
    ),
    "uniform min > max": (
        _conv("kernel_size: 1", 'weight_filler { type: "uniform" min: 2 max: 1 }'),
        "min 2 is above max 1",
        '"uniform"',
    ),
    "Reshape without shape": ('edit { append { layer { name: "r" type: "Reshape" } } }', "needs reshape_param", '"r"'),
    "Reshape to another size": (
        'edit { append { layer { name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: 7 } } } } }',
        "cannot reshape",
        '"r"',
    ),
    "pool kernel 0": (
        _insert('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 0 }'),
        "kernel_size must be at least 1",
        '"p"',
    ),
    "softmax axis 10": (
        'edit { append { layer { name: "s" type: "Softmax" softmax_param { axis: 10 } } } }',
        "axis 10 is out of range for a 2-D input",
        '"s"',
    ),
    "concat axis 5": (
        'edit { append { layer { name: "s" type: "Concat" bottom: "classifier.fc2" '
        'bottom: "classifier.fc2" concat_param { axis: 5 } } } }',
        "axis 5 is out of range",
        '"s"',
    ),
    "huge pad": (_conv("kernel_size: 1 pad: 1000000000"), "more than this machine's", '"c"'),
    "huge num_output": (
        'edit { append { layer { name: "f" type: "InnerProduct" inner_product_param { num_output: 2000000000 } } } }',
        "its new weights",
        '"f"',
    ),
    "num_output 0 in an eltwise's layer": (
        'edit { eltwise { name: "g" operation: PROD bottom: "features.block1_pool" layer { name: "gc" '
        'type: "Convolution" convolution_param { num_output: 0 kernel_size: 1 } } } }',
        "num_output must be at least 1",
        '"gc"',
    ),
    "a type without Caffe syntax": (
        'edit { append { layer { name: "n" type: "LayerNorm" } } }',
        "LayerNorm layers have no Caffe syntax",
        '"n"',
    ),
    "Pad without its pads": ('edit { append { layer { name: "n" type: "Pad" } } }', "no Caffe syntax", '"n"'),
    "an added Input": ('edit { append { layer { name: "i" type: "Input" } } }', "an Input is the source's", '"i"'),
    "shape error after insert": (
        _conv("kernel_size: 1", "").replace("num_output: 16", "num_output: 4"),
        "layer 'classifier.fc1' (InnerProduct)",
        "edit {",
    ),
}


@pytest.mark.parametrize("case", list(TOY_CASES))
def test_hostile_edits_end_in_one_located_error(case: str, toy_spec, tmp_path: Path, capsys) -> None:
    edits, message, points_at = TOY_CASES[case]
    spec = toy_spec(edits)
    for argv in (["plan", "-q", str(spec)], ["apply", "-q", str(spec), "-o", str(tmp_path / "out")]):
        code, err = _run(capsys, *argv)
        assert code == 2 and "Traceback" not in err, err
        found = _located(err, spec)
        assert found, err
        assert message in err, err
        line, col = int(found.group(1)), int(found.group(2))
        assert spec.read_text().splitlines()[line - 1][col - 1 :].startswith(points_at), (err, points_at)
        assert not (tmp_path / "out").exists()


def _two_convs_spec(tmp_path: Path, collapse: str) -> Path:
    spec = tmp_path / "two.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "{NETS}:TwoConvs" }} input_shape: [1, 3, 8, 8] }}\n'
        f'edit {{ collapse {{ first: "conv1" second: "conv2" name: "conv12" mode: FIT {collapse} }} }}\n'
    )
    return spec


@pytest.mark.parametrize(
    "collapse,message",
    [
        ("samples: 0", "samples must be at least 1"),
        ("kernel_size: 4", "a 4x4 convolution (stride 1, pad 1) on 'conv1''s input (1, 3, 8, 8) gives 7x7"),
        ("samples: 4000000000", "fitting 'conv12' on 4000000000 samples would take"),
    ],
)
def test_fit_collapse_is_refused_from_shapes(collapse: str, message: str, tmp_path: Path, capsys) -> None:
    spec = _two_convs_spec(tmp_path, collapse)
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and message in err and _located(err, spec), err
    if "4000000000" in collapse:  # the estimate is given as a figure, against the machine's memory
        assert re.search(r"would take [\d.]+ [kMGTP]?B, more than this machine's [\d.]+ [kMGTP]?B", err), err


def test_plan_of_a_fit_collapse_reads_no_weights_and_says_apply_fits(tmp_path: Path, capsys) -> None:
    spec = _two_convs_spec(tmp_path, "kernel_size: 5 samples: 8")
    assert main(["plan", str(spec)]) == 0
    assert "least-squares fit on 8 seeded random inputs happens at apply" in capsys.readouterr().out
    import surgery

    planned = surgery.plan(spec)
    row = next(r for r in planned.report.rows if r["name"] == "conv12")
    assert row["params"] == 4 * 3 * 5 * 5 + 4 and row["output_shape"] == [1, 4, 8, 8]
    result = surgery.apply(spec, tmp_path / "out")
    assert any("relative error" in a.detail for a in result.report.actions if a.layer == "conv12")


FACTORY_CASES = {
    "syntax error": ("broken.py", "def build(:\n", "SyntaxError"),
    "raises at import": ("boom.py", "raise ValueError('no import for you')\n", "ValueError: no import for you"),
}


@pytest.mark.parametrize(
    "case", ["syntax error", "raises at import", "raises when called", "not a Module", "relative module"]
)
def test_factories_that_fail_give_one_located_error(case: str, tmp_path: Path, capsys) -> None:
    if case in FACTORY_CASES:
        name, code_text, message = FACTORY_CASES[case]
        (tmp_path / name).write_text(code_text)
        factory = f"{name}:build"
    else:
        factory, message = {
            "raises when called": (f"{NETS}:raises", "RuntimeError: the factory refuses"),
            "not a Module": (f"{NETS}:not_a_module", "returned a dict, not an nn.Module"),
            "relative module": (".surgery.zoo:DigitsCNN", "is not a module name"),
        }[case]
    spec = tmp_path / "f.prototxt"
    spec.write_text(f'seed: 1\nsource {{ torch {{ factory: "{factory}" }} input_shape: [1, 3, 8, 8] }}\n')
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and message in err, err
    assert _located(err, spec).group(1) == "2", err


def _yaml_spec(tmp_path: Path, tail: str, name: str = "s.yaml") -> Path:
    spec = tmp_path / name
    spec.write_text("source:\n  torch: {factory: 'surgery.zoo:DigitsCNN'}\n  input_shape: [1, 1, 8, 8]\n" + tail)
    return spec


LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)
YAML_CASES = {
    "seed is a list": ("seed: [1, 2]\n", "seed", (4, 1)),
    "NUL": ("seed: 1\x00\n", "NUL", (4, 8)),
    "1000-deep nesting": ("name: " + "[" * 1000 + "]" * 1000 + "\n", "nested more than", (4, 71)),
    "1000-deep block nesting": ("".join("  " * i + f"k{i}:\n" for i in range(1000)), "nested more than", (68, 129)),
    "billion laughs": (LAUGHS, "expands to more than", None),
    "edit item null": ("edit:\n  - null\n", "edit 1 is empty (null)", (5, 5)),
    "edit not a list": ("seed: 2\nedit: {lr: {}}\n", "`edit` is a list of edits", (5, 1)),
    "edit: [lr]": ("edit: [lr]\n", "edit 1 is the str 'lr'", (4, 8)),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_yaml_errors_have_their_real_line_and_column(case: str, tmp_path: Path, capsys) -> None:
    tail, message, where = YAML_CASES[case]
    spec = _yaml_spec(tmp_path, tail)
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and message in err, err
    found = _located(err, spec)
    assert found, err
    if where:
        assert (int(found.group(1)), int(found.group(2))) == where, err
    assert 'no field named "l"' not in err


def test_a_spec_without_source_is_located(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "s.prototxt"
    spec.write_text("seed: 1\n")
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and err.startswith(f"error: {spec}:1:1: the spec names no source model")


def test_a_non_utf8_spec_is_located_at_the_byte(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "s.prototxt"
    spec.write_bytes(b'seed: 1\nname: "caf\xe9"\n')
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and err.startswith(f"error: {spec}:2:11: byte 0xe9 is not UTF-8 text"), err


@pytest.mark.parametrize("name", [".", ".x", "class", 'a\\"b', '\\"\\"\\"', "x'y"])
def test_hostile_layer_names_apply_or_fail_cleanly(name: str, toy_spec, tmp_path: Path, capsys) -> None:
    spec = toy_spec(f'edit {{ append {{ layer {{ name: "{name}" type: "ReLU" }} }} }}\noutput {{ pytorch {{ }} }}')
    code, err = _run(capsys, "apply", "-q", str(spec), "-o", str(tmp_path / "out"))
    assert code == 0 or (code == 2 and _located(err, spec)), err
    assert "Traceback" not in err


def test_appending_thousands_of_layers_costs_linear_shape_work(tmp_path: Path, monkeypatch) -> None:
    """Each appended layer's shapes are inferred a bounded number of times (the old code
    re-inferred the whole net twice per new layer: quadratic)."""
    import surgery
    from surgery.layers import layer_type

    count = 3000
    layers = " ".join(f'layer {{ name: "r{i}" type: "ReLU" }}' for i in range(count))
    spec = tmp_path / "long.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "surgery.zoo:DigitsCNN" }} input_shape: [1, 1, 8, 8] }}\n'
        f"edit {{ append {{ {layers} }} }}\n"
    )
    relu = layer_type("ReLU")
    calls = []
    original = type(relu).infer_shapes
    monkeypatch.setattr(
        type(relu), "infer_shapes", lambda self, layer, shapes: calls.append(1) or original(self, layer, shapes)
    )
    planned = surgery.plan(spec)
    assert len(planned.net) > count
    assert len(calls) < 6 * count, f"{len(calls)} ReLU shape inferences for {count} new layers"


@pytest.mark.parametrize(
    "recurrent,message",
    [
        ("num_output: 0", "num_output (the hidden size) must be at least 1"),
        ('num_output: 4 nonlinearity: "sigmoid"', 'must be "tanh" or "relu"'),
    ],
)
def test_recurrent_parameters_are_checked_by_the_layer_type(
    recurrent: str, message: str, tmp_path: Path, capsys
) -> None:
    spec = tmp_path / "v.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
        'edit { sequence { at: "features.pool2" frames: 4\n'
        f'  layer {{ name: "rnn" type: "RNN" recurrent_param {{ {recurrent} }} }} }} }}\n'
    )
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and message in err, err
    assert _located(err, spec).group(1) == "3", err


def test_a_layer_whose_filled_weights_pass_memory_is_refused_with_the_figure(toy_spec, capsys) -> None:
    """A padded conv makes the next fully connected layer's input huge: its weights are
    refused from their shapes (counting the filler's float64 draw), before any allocation."""
    spec = toy_spec(
        'edit { cut { at: "features.block2_pool" } }\n'
        'edit { append { layer { name: "c" type: "Convolution" '
        "convolution_param { num_output: 16 kernel_size: 1 pad: 2000 } }\n"
        '  layer { name: "f" type: "Flatten" }\n'
        '  layer { name: "fc" type: "InnerProduct" inner_product_param { num_output: 64 } } } }'
    )
    code, err = _run(capsys, "plan", "-q", str(spec))
    assert code == 2 and re.search(
        r"'fc' \(InnerProduct\): its new weights .* would take [\d.]+ [GTP]B, more than", err
    ), err
    assert _located(err, spec).group(1) == "7", err
