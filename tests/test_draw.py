"""The before/after picture and the HTML report: the SVG is well-formed XML with one box per
layer in the right colour class, long unchanged runs fold, the page references nothing
outside itself, a real headless browser renders it and runs its sorting script, and
`surgery draw` works on every spec in specs/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from test_specs import SPECS, _needs
from torch import nn

import surgery
from surgery.cli import main

SVG = "{http://www.w3.org/2000/svg}"
TESTS = Path(__file__).resolve().parent

EDITS = """
edit { classifier { layer: "classifier.fc2" rename: "classifier.head" num_output: 3 } }
edit { fold_batchnorm { layer: "features.block1_conv1" } }
edit { remove { layer: "classifier.drop" } }
edit { lr { up_to: "features.block1_pool" lr_mult: 0 } }
edit { lr { layer: "classifier.head" lr_mult: 10 } }
"""


def _boxes(svg_text: str) -> dict[str, list[dict[str, str]]]:
    """Per panel title: every box's class and the layers it stands for."""
    root = ET.fromstring(svg_text)
    panels = {}
    for panel in root.iter(f"{SVG}g"):
        if panel.get("class") != "panel":
            continue
        boxes = []
        for g in panel.iter(f"{SVG}g"):
            kind = (g.get("class") or "").split()
            if kind and kind[0] in ("layer", "group"):
                names = [g.get("data-layer")] if kind[0] == "layer" else g.get("data-layers").split("\n")
                boxes.append({"kind": kind[0], "change": kind[1], "names": names})
        panels[panel.get("data-title").split(":")[0]] = boxes
    return panels


def _classes(boxes: list[dict]) -> dict[str, str]:
    return {name: box["change"] for box in boxes for name in box["names"]}


def test_every_layer_appears_with_its_change(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    out = surgery.draw(spec, tmp_path / "change.svg", show_all=True)
    panels = _boxes(out.read_text())
    planned = surgery.plan(spec)
    before, after = _classes(panels["source"]), _classes(panels["edited"])
    assert sorted(after) == sorted(planned.net.layer_names())
    assert sorted(before) == sorted(planned.source.layer_names())
    assert all(box["kind"] == "layer" for box in panels["edited"] + panels["source"])
    assert after["classifier.head"] == "reinitialised"
    assert after["features.block1_conv1"] == "derived"  # the BatchNorm folded into it
    assert after["features.block2_conv1"] == "kept"
    assert before["features.block1_bn"] == "dropped"  # folded away
    assert before["classifier.drop"] == "dropped"
    assert before["classifier.fc2"] == "reinitialised"  # became classifier.head
    assert "classifier.head" not in before and "classifier.fc2" not in after
    text = out.read_text()
    assert "lr x10" in text and "frozen" in text and "was classifier.fc2" in text
    assert re.search(r"reinitialised · spec line \d+", text)


def test_unchanged_runs_fold_and_every_layer_is_still_drawn(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec('edit { classifier { layer: "classifier.fc2" num_output: 3 } }')
    panels = _boxes(surgery.draw(spec, tmp_path / "change.svg").read_text())
    names = surgery.plan(spec).net.layer_names()
    for boxes in panels.values():
        drawn = [name for box in boxes for name in box["names"]]
        assert sorted(drawn) == sorted(names), "each layer exactly once"
        groups = [box for box in boxes if box["kind"] == "group"]
        assert groups and all(box["change"] == "kept" for box in groups)
        assert len(boxes) < len(names) / 2
    assert _classes(panels["edited"])["classifier.fc2"] == "reinitialised"


def test_folding_keeps_a_branch_point_visible(tmp_path: Path) -> None:
    """The gate's input is the end of a folded box on both sides, so the picture shows
    where the gate sits."""
    spec = TESTS.parent / "specs" / "digits_gate.prototxt"
    panels = _boxes(surgery.draw(spec, tmp_path / "gate.svg").read_text())
    for boxes in panels.values():
        ends = [box["names"][-1] for box in boxes if box["kind"] == "group"]
        assert "features.pool1" in ends
    assert {"features.gate", "features.gate_conv"} <= {n for n, c in _classes(panels["edited"]).items() if c == "added"}


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class DeepResidual(nn.Module):
    """Forty residual blocks (over 250 layers): a long net with skip connections."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(*[_Residual(4) for _ in range(40)])
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def test_a_deep_residual_net_stays_readable(tmp_path: Path) -> None:
    """Only the classifier and the freeze boundary break the 250 layers into boxes."""
    spec = tmp_path / "deep.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "{Path(__file__)}:DeepResidual" }} input_shape: [1, 3, 8, 8] }}\n'
        'edit { classifier { layer: "fc" num_output: 3 } }\n'
        'edit { lr { up_to: "blocks.29.relu@1" lr_mult: 0 } }\n'
    )
    assert len(surgery.plan(spec).net) > 250
    panels = _boxes(surgery.draw(spec, tmp_path / "deep.svg").read_text())
    for boxes in panels.values():
        assert len(boxes) <= 6, [box["names"][:2] for box in boxes]
    edited = panels["edited"]
    assert [box["names"] for box in edited if box["kind"] == "layer"] == [["x"], ["fc"]]


def test_draw_reads_no_weights(tmp_path: Path) -> None:
    """Like plan: an ONNX source whose external weight file is emptied still draws."""
    from toy_nets import toy_cnn

    from surgery.emitters.onnx_model import emit_onnx

    model = emit_onnx(surgery.load(toy_cnn(), (1, 3, 16, 16)), tmp_path / "toy.onnx", external_data=True)
    model.with_name("toy.onnx.data").write_bytes(b"")
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { onnx { path: "toy.onnx" } }\nedit { classifier { layer: "classifier.fc2" num_output: 3 } }\n'
    )
    assert surgery.draw(spec, tmp_path / "c.html").stat().st_size
    assert "classifier.fc2" in surgery.draw(spec, tmp_path / "c.svg").read_text()


# ------------------------------------------------------------------- report page
class _Tables(HTMLParser):
    """Rows of each table by id, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.current = dict(attrs).get("id")
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.tables[self.current].append([])
        elif tag == "td" and self.current:
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.tables[self.current][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return {k: [r for r in v if r] for k, v in parser.tables.items()}


def _no_external_reference(html: str) -> None:
    assert not re.search(r"https?:|//[a-z]", html, re.I), "no URL of any kind"
    assert not re.search(r"""\b(src|href|xlink:href|action)\s*=\s*["'](?!#)""", html, re.I), "no linked file"
    assert "@import" not in html and not re.search(r"url\((?!#)", html), "no CSS fetch"
    assert "<link" not in html.lower() and "<iframe" not in html.lower()


def test_apply_writes_a_self_contained_report_page(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(EDITS)
    result = surgery.apply(spec, tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    assert page in result.files
    html = page.read_text()
    _no_external_reference(html)
    tables = _tables(html)
    assert [row[1] for row in tables["layers"]] == [row["name"] for row in result.report.rows]
    assert {row[3] for row in tables["edits"]} >= {"classifier.head", "features.block1_conv1", "features.block1_bn"}
    assert "Not run" in html and "<svg" in html
    assert len(tables["weights"]) >= 2  # source and filler at least


def test_apply_verify_puts_the_figures_in_both_reports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    spec = TESTS.parent / "specs" / "digits_gate.prototxt"
    assert main(["apply", str(spec), "-o", str(tmp_path / "out"), "--verify", "-q"]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    rows = _tables(html)["verify"]
    assert {row[0] for row in rows} >= {"onnx vs torch", "torch vs source (untouched)"}
    assert all(row[-1].startswith("ok (") for row in rows)
    import json

    figures = json.loads((tmp_path / "out" / "report.json").read_text())["verify"]
    assert figures["ok"] and len(figures["comparisons"]) == len(rows)


def test_verify_rewrites_a_report_page_with_its_figures(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    spec = TESTS.parent / "specs" / "digits_parity.prototxt"
    surgery.apply(spec, tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    assert "verify-none" in page.read_text()
    assert main(["verify", str(spec), "--html", str(page), "-q"]) == 0
    rows = _tables(page.read_text())["verify"]
    assert rows and all(row[-1].startswith("ok (") for row in rows)
    # report.json beside it keeps the page's sha256 and size in step with the new page
    import hashlib
    import json

    record = next(r for r in json.loads((tmp_path / "out" / "report.json").read_text())["files"]["outputs"]
                  if r["path"] == "report.html")  # fmt: skip
    assert record["sha256"] == hashlib.sha256(page.read_bytes()).hexdigest() and record["size"] == page.stat().st_size
    assert main(["verify", str(spec), "--html", str(tmp_path / "page.txt"), "-q"]) == 2


def test_names_from_the_model_are_escaped(tmp_path: Path) -> None:
    """A layer name is data: markup in it shows as text, in the SVG and in the page."""
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        'name: "n" input: "data" input_shape { dim: 1 dim: 2 }\n'
        'layer { name: "<script>alert(1)</script>" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 3 } }\n"
    )
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { caffe { prototxt: "net.prototxt" } }\n'
        'edit { classifier { layer: "<script>alert(1)</script>" num_output: 4 } }\n'
    )
    html = surgery.draw(spec, tmp_path / "page.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    ET.fromstring(surgery.draw(spec, tmp_path / "c.svg").read_text())


def test_control_characters_in_names_still_make_valid_xml(tmp_path: Path) -> None:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        'name: "n" input: "data" input_shape { dim: 1 dim: 2 }\n'
        'layer { name: "fc\\001\\033[31m" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 3 } }\n"
    )
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { caffe { prototxt: "net.prototxt" } }\n'
        'edit { classifier { layer: "fc\\001\\033[31m" num_output: 4 } }\n'
    )
    svg = surgery.draw(spec, tmp_path / "c.svg").read_text()
    names = [box["names"] for box in _boxes(svg)["edited"]]
    assert ["fc\ufffd\ufffd[31m"] in names
    assert "\x01" not in surgery.draw(spec, tmp_path / "c.html").read_text()


# --------------------------------------------------------------------- browser
def _browser() -> str | None:
    for name in ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _headless(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_page_renders_in_a_real_browser(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no headless browser on PATH (chromium / chromium-headless-shell); "
            "`apt-get install chromium` runs this test"
        )
    spec = TESTS.parent / "specs" / "googlenet_flowers.prototxt"
    page = surgery.draw(spec, tmp_path / "report.html")
    # The sorting script ran: #sort=params orders the layers by parameter count.
    dom = _headless(browser, tmp_path, "--dump-dom", page.as_uri() + "#sort=params")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<g class="layer reinitialised" data-layer="loss3/flowers">' in dom.stdout  # the inline picture
    rows = _tables(dom.stdout)["layers"]
    params = [int(row[4].replace(",", "")) for row in rows]
    assert (
        len(rows) == 21
        and params == sorted(params)
        and params != [int(r[4].replace(",", "")) for r in _tables(page.read_text())["layers"]]
    )
    shot = tmp_path / "shot.png"
    run = _headless(browser, tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri())
    assert run.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 30_000, "a page with a picture and tables, not a blank one"


# ------------------------------------------------------------------- every spec
@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_draw_works_on_every_spec(spec: Path, tmp_path: Path) -> None:
    _needs(spec)
    out = surgery.draw(spec, tmp_path / "change.svg")
    panels = _boxes(out.read_text())
    assert set(panels) == {"source", "edited"}
    edited = [name for box in panels["edited"] for name in box["names"]]
    assert sorted(edited) == sorted(surgery.plan(spec).net.layer_names())


def test_cli_draw_png_and_errors(tmp_path: Path, capsys) -> None:
    spec = TESTS.parent / "specs" / "digits_parity.prototxt"
    assert main(["draw", str(spec), "-o", str(tmp_path / "x.pdf")]) == 2
    assert "name the output .svg, .png or .html" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()
    pytest.importorskip("resvg_py")
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "draw", str(spec), "-o", str(tmp_path / "c.png"), "--all", "-q"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "spec,picture",
    [("googlenet_flowers.prototxt", "googlenet_flowers.svg"), ("digits_gate.prototxt", "digits_gate.svg")],
)
def test_readme_pictures_are_current(spec: str, picture: str, tmp_path: Path) -> None:
    committed = TESTS.parent / "docs" / picture
    fresh = surgery.draw(TESTS.parent / "specs" / spec, tmp_path / picture)
    assert fresh.read_text() == committed.read_text(), "run python tools/draw_readme_pictures.py and commit docs/"
    assert committed.stat().st_size < 60_000


def _wide_onnx(folder: Path, branches: int) -> Path:
    """x -> ``branches`` parallel Relus -> Sum: nothing folds, every branch is a box."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], [f"r{i}"], name=f"r{i}") for i in range(branches)]
    nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(branches)], ["y"], name="sum"))
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, folder / "wide.onnx")
    spec = folder / "spec.prototxt"
    spec.write_text('source { onnx { path: "wide.onnx" } }\noutput { onnx { } }\n')
    return spec


def test_a_large_graph_is_placed_by_rank_with_every_box_below_its_inputs() -> None:
    """Past grandalf's size (its setup grows with the square of the boxes) the layout is
    by topological generation: every box placed, below everything it reads, rows wrapped."""
    from surgery.emitters.picture.layout import MAX_SUGIYAMA, ROW_BOXES, place

    count = MAX_SUGIYAMA + 100
    sizes = {"src": (80.0, 30.0), "sink": (80.0, 30.0)} | {f"b{i}": (60.0, 30.0) for i in range(count)}
    edges = [("src", f"b{i}") for i in range(count)] + [(f"b{i}", "sink") for i in range(count)]
    placed = place(sizes, edges)
    assert set(placed.centres) == set(sizes)
    assert all(placed.centres[a][1] < placed.centres[b][1] for a, b in edges)
    rows = {placed.centres[f"b{i}"][1] for i in range(count)}
    assert len(rows) == -(-count // ROW_BOXES)  # the wide rank wraps into rows
    assert all(len(route) == 2 for route in placed.routes.values())


def test_a_report_page_too_large_to_draw_says_so_and_apply_finishes(tmp_path: Path, capsys) -> None:
    from surgery.change import MAX_PAGE_BOXES

    spec = _wide_onnx(tmp_path, MAX_PAGE_BOXES + 10)
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    page = (tmp_path / "out" / "report.html").read_text()
    assert "The picture is left out" in page and "<svg" not in page
    assert page.count("<tr") > MAX_PAGE_BOXES  # the layer table still lists every layer
    (tmp_path / "small").mkdir()
    small = _wide_onnx(tmp_path / "small", 30)
    assert main(["apply", "-q", str(small), "-o", str(tmp_path / "out_small")]) == 0
    assert "<svg" in (tmp_path / "out_small" / "report.html").read_text()
