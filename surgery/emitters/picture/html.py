"""The surgery report as one self-contained HTML page: the picture (inline SVG), the
edits with their spec lines, where the weights came from, the per-layer table (sortable),
and the verify figures when verify ran. No external reference of any kind: the CSS and
the few lines of script are inline, so the file reads the same offline, attached to a
pull request or opened years later. Every string from a model or a spec is escaped."""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from surgery.emitters.picture.model import CHANGE_STYLES, xml_safe

_CSS = """
body{font-family:"DejaVu Sans",Verdana,Helvetica,Arial,sans-serif;margin:24px;color:#222;font-size:14px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-bottom:14px}
.chips span{display:inline-block;margin:0 8px 6px 0;padding:3px 9px;border-radius:10px;border:1px solid #999}
.picture{overflow:auto;border:1px solid #e0e0e0;padding:6px;max-height:90vh}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4;position:sticky;top:0}table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aaa}td:first-child,th{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f6f6f6;padding:1px 4px;border-radius:3px}.ok{color:#2e7d32;font-weight:bold}
.bad{color:#c62828;font-weight:bold}label{cursor:pointer}.hidden{display:none}
#picture-folded svg{max-width:100%;height:auto}
"""

# Sort a table by the clicked column (numbers by value, text alphabetically; a second
# click reverses), and switch between the folded and the full picture.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var down = th.getAttribute("data-dir") !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", down ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute("data-v"), y = b.cells[column].getAttribute("data-v");
        var nx = parseFloat(x), ny = parseFloat(y), r;
        r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return down ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
// report.html#sort=params opens with the layers sorted by that column (a link to share).
var wanted = /^#sort=(.+)$/.exec(decodeURIComponent(location.hash));
if (wanted) {
  document.querySelectorAll("#layers th").forEach(function (th) {
    if (th.textContent === wanted[1]) { th.click(); }
  });
}
var toggle = document.getElementById("show-all");
if (toggle) {
  toggle.addEventListener("change", function () {
    document.getElementById("picture-folded").classList.toggle("hidden", toggle.checked);
    document.getElementById("picture-all").classList.toggle("hidden", !toggle.checked);
  });
}
"""


def _cell(value: Any, sort: Any = None, numeric: bool = False) -> str:
    key = value if sort is None else sort
    cls = ' class="num"' if numeric else ""
    return f'<td{cls} data-v="{escape(str(key))}">{escape(str(value))}</td>'


def _table(headers: list[str], rows: list[str], sortable: bool, ident: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    cls = ' class="sortable"' if sortable else ""
    return f'<table id="{ident}"{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _shape(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _mult(value: Any) -> str:
    if value is None:
        return "-"
    return "/".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


def _layers_table(layers: list[dict[str, Any]]) -> str:
    rows = []
    for index, row in enumerate(layers):
        fill = CHANGE_STYLES.get(row["change"], CHANGE_STYLES["derived"])[0]
        train = ("yes" if row["trainable"] else "frozen") if row["lr_mult"] is not None else "-"
        rows.append(
            f'<tr class="{escape(row["change"])}" style="background:{fill}">'
            + _cell(index, numeric=True)
            + _cell(row["name"])
            + _cell(row["type"])
            + _cell(_shape(row["output_shape"]), sort=_numel(row["output_shape"]), numeric=True)
            + _cell(f"{row['params']:,}", sort=row["params"], numeric=True)
            + _cell(row["change"])
            + _cell(_mult(row["lr_mult"]))
            + _cell(_mult(row["decay_mult"]))
            + _cell(train)
            + _cell(row["origin"])
            + _cell(", ".join(_line(w) for w in row.get("where", [])))
            + "</tr>"
        )
    headers = [
        "#",
        "layer",
        "type",
        "output",
        "params",
        "change",
        "lr_mult",
        "decay_mult",
        "trains",
        "weights from",
        "spec",
    ]
    return _table(headers, rows, True, "layers")


def _line(where: str) -> str:
    """``specs/x.prototxt:14:28`` -> ``line 14``."""
    parts = where.rsplit(":", 2)
    return f"line {parts[1]}" if len(parts) == 3 and parts[1].isdigit() else where


def _numel(shape: Any) -> int:
    total = 1
    for d in shape or [0]:
        total *= d
    return total


def _edits_table(edits: list[dict[str, Any]], spec_lines: dict[int, str]) -> str:
    """One row per spec line and outcome: an ``lr`` over 130 layers is one row naming the
    first and last (the full list in the cell's tooltip)."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for edit in edits:
        key = (edit.get("where", ""), edit["op"], edit["what"], edit["detail"])
        groups.setdefault(key, []).append(edit["layer"])
    rows = []
    for (where, op, what, detail), layers in groups.items():
        label = _line(where)
        line = label.removeprefix("line ")
        text = spec_lines.get(int(line), "") if line.isdigit() else ""
        who = layers[0] if len(layers) == 1 else f"{layers[0]} … {layers[-1]} ({len(layers)} layers)"
        rows.append(
            "<tr>"
            + _cell(label or "-", sort=int(line) if line.isdigit() else 0)
            + f"<td><code>{escape(text)}</code></td>"
            + _cell(op)
            + f'<td data-v="{escape(layers[0])}" title="{escape(chr(10).join(layers))}">{escape(who)}</td>'
            + _cell(what)
            + _cell(detail)
            + "</tr>"
        )
    return _table(["spec", "spec text", "edit", "layer", "what", "detail"], rows, True, "edits")


def _weights_section(report: dict[str, Any]) -> str:
    """Where the weights came from: parameter counts by origin, and Caffe's by-name copy."""
    counts: Counter[str] = Counter()
    blobs: Counter[str] = Counter()
    for row in report["layers"]:
        for blob in row.get("blobs", {}).values():
            kind = blob["origin"].split(":", 1)[0]
            size = _numel(blob["shape"]) if blob["shape"] else 1
            counts[kind] += size
            blobs[kind] += 1
    rows = [
        (
            "<tr>"
            + _cell(kind)
            + _cell(blobs[kind], numeric=True)
            + _cell(f"{counts[kind]:,}", sort=counts[kind], numeric=True)
            + "</tr>"
        )
        for kind in sorted(counts)
    ]
    out = _table(["weights from", "blobs", "values"], rows, False, "weights")
    copy = report.get("weight_copy")
    if copy:
        items = "".join(
            f"<li><b>{escape(what)}</b> ({len(names)}): {escape(', '.join(names)) or '-'}</li>"
            for what, names in copy.items()
        )
        out += f"<p>Weights matched to layers by name:</p><ul>{items}</ul>"
    return out + _preprocess_section(report.get("preprocess"))


def _preprocess_section(preprocess: dict[str, Any] | None) -> str:
    """How a decoded image becomes the input, and who said so."""
    if not preprocess:
        return ""
    from surgery.preprocess import describe

    return (
        f'<p id="preprocess">Input preprocessing: {escape(describe(preprocess))}, '
        f"interpolation {escape(preprocess['interpolation'].lower())}.</p>"
    )


def _verify_section(verified: dict[str, Any] | None) -> str:
    if verified is None:
        return (
            '<p id="verify-none">Not run. <code>surgery apply SPEC -o DIR --verify</code> runs it and puts the '
            "figures here; <code>surgery verify SPEC --html DIR/report.html</code> rewrites this page with "
            "them.</p>"
        )
    verdict = (
        '<span class="ok">all within tolerance</span>'
        if verified["ok"]
        else '<span class="bad">some outputs differ beyond the tolerance</span>'
    )
    rows = [
        "<tr>"
        + _cell(c["what"])
        + _cell(c["blob"])
        + _cell(f"{c['max_abs']:.3g}", sort=c["max_abs"], numeric=True)
        + _cell(f"{c['max_rel']:.3g}", sort=c["max_rel"], numeric=True)
        + _cell(f"{c['allclose_ratio']:.3g}", sort=c["allclose_ratio"], numeric=True)
        + f'<td class="{"ok" if c["ok"] else "bad"}">'
        + (f"ok ({escape(c['passed_by'])})" if c["ok"] else "DIFFERS")
        + "</td></tr>"
        for c in verified["comparisons"]
    ]
    first = verified["comparisons"][0] if verified["comparisons"] else {"atol": 0, "rtol": 0, "scale_rtol": 0}
    rules = (
        f"A comparison passes by allclose (|a - b| &lt;= {first['atol']:g} + {first['rtol']:g}·|b| for every "
        f"element; the ratio column is the worst element against that bound) or by scale (max abs &lt;= "
        f"{first['scale_rtol']:g}·max |b|)."
    )
    return (
        f'<p id="verify-verdict">{verdict}; onnxruntime ran on {escape(verified["provider"])}, '
        f"seed {escape(str(verified.get('seed', 0)))}. {rules}</p>"
        + _table(["comparison", "blob", "max abs", "max rel", "allclose ratio", ""], rows, True, "verify")
        + _precision_section(verified.get("precision"))
    )


def _precision_section(figures: dict[str, Any] | None) -> str:
    """A reduced-precision file against float32: the verdict, the output's error, the
    file's size, and the layers furthest from float32."""
    if not figures:
        return ""
    agreement = figures["top1_agreement"]
    if agreement is None:
        verdict = "the output holds no class scores to agree on"
    else:
        mark = '<span class="ok">ok</span>' if figures["ok"] else '<span class="bad">below the bar</span>'
        verdict = f"top-1 agreement {agreement:.4f} (bar {figures['bar']:g}): {mark}"
    rows = [
        "<tr>"
        + _cell(row["layer"] or row["tensor"])
        + _cell(row["tensor"])
        + _cell(f"{row['max_abs']:.3g}", sort=row["max_abs"], numeric=True)
        + _cell(f"{row['max_rel']:.3g}", sort=row["max_rel"], numeric=True)
        + "</tr>"
        for row in figures["worst_layers"]
    ]
    return (
        f'<h3 id="precision">The {escape(figures["precision"])} file against float32</h3>'
        f"<p>On {figures['inputs']} inputs ({escape(figures['inputs_from'])}): {verdict}. Output max abs "
        f"{figures['max_abs']:.3g}, mean abs {figures['mean_abs']:.3g}; the file is {figures['bytes']:,} bytes, "
        f"{figures['bytes'] / figures['fp32_bytes']:.2f}x the float32 one. The layers furthest from float32 "
        "(the first to keep in float32, with <code>keep_float</code>, if the agreement falls short):</p>"
        + _table(["layer", "tensor", "max abs", "max rel"], rows, True, "precision-layers")
    )


def report_page(
    title: str,
    spec_name: str,
    report: dict[str, Any],
    svg_folded: str | None,
    svg_all: str | None,
    spec_lines: dict[int, str],
    verified: dict[str, Any] | None,
) -> str:
    """The report page's HTML text.

    Args:
        title: the page title (the net's name).
        spec_name: the spec file, as the user named it.
        report: the report as plain data (``Report.as_dict()``).
        svg_folded: the picture, unchanged runs folded (inline SVG markup), or ``None``
            when it has too many boxes to draw on a page (the page says so).
        svg_all: the picture with every layer, or ``None`` when nothing folded.
        spec_lines: the text of the spec lines the edits point at, by line number.
        verified: verify's figures (``provider``, ``ok``, ``seed``, ``comparisons``), or ``None``.
    """
    changes = Counter(row["change"] for row in report["layers"])
    chips = "".join(
        f'<span style="background:{CHANGE_STYLES.get(c, CHANGE_STYLES["derived"])[0]}">{escape(c)}: {n}</span>'
        for c, n in changes.items()
    )
    toggle = ""
    pictures = (
        f'<div class="picture" id="picture-folded">{svg_folded}</div>'
        if svg_folded is not None
        else '<p class="note">The picture is left out: even with unchanged runs folded, the net has more boxes '
        "than a page draws in reasonable time. <code>surgery draw SPEC -o net.svg</code> draws it whole.</p>"
    )
    if svg_all is not None:
        toggle = '<p><label><input type="checkbox" id="show-all"> show every layer</label></p>'
        pictures += f'<div class="picture hidden" id="picture-all">{svg_all}</div>'
    return xml_safe(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>surgery report: {escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>surgery report: {escape(title)}</h1>
<div class="sub">spec <code>{escape(spec_name)}</code> · {len(report["layers"])} layers ·
{report["total_params"]:,} parameters ({report["trainable_params"]:,} trainable) ·
outputs {escape(", ".join(report["outputs"]))}</div>
<div class="chips">{chips}</div>
<h2>The change</h2>{toggle}{pictures}
<h2>Edits</h2>{_edits_table(report["edits"], spec_lines)}
<h2>Weights</h2>{_weights_section(report)}
<h2>Verify</h2>{_verify_section(verified)}
<h2>Layers</h2><p>Click a column to sort.</p>{_layers_table(report["layers"])}
<script>{_SCRIPT}</script>
</body></html>
""")
