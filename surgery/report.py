"""The per-layer report: where every weight came from, and how it will train."""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from surgery.ir import Layer, Net
from surgery.layers import layer_type
from surgery.ops.base import ADDED, LR, REINITIALISED, RENAMED, Action

#: What happened to a layer, strongest first: a layer's row shows the first that applies.
CHANGES = ("added", "reinitialised", "derived", "renamed", "kept")


def _origin(layer: Layer) -> str:
    kinds = {str(blob.origin) for blob in layer.blobs.values()}
    if not kinds:
        return "-"
    if len(kinds) == 1:
        return kinds.pop()
    return "; ".join(f"{role}: {blob.origin}" for role, blob in layer.blobs.items())


def _mults(layer: Layer) -> tuple[Any, Any, bool]:
    roles = [r for r in layer_type(layer.type).trainable_roles(layer) if r in layer.blobs]
    if not roles:
        return None, None, False
    lrs = [layer.blobs[r].lr_mult for r in roles]
    decays = [layer.blobs[r].decay_mult for r in roles]
    trainable = any(lr != 0 for lr in lrs)
    lr = lrs[0] if len(set(lrs)) == 1 else lrs
    decay = decays[0] if len(set(decays)) == 1 else decays
    return lr, decay, trainable


@dataclass
class Report:
    """The report of a surgery: one row per layer, plus what each edit did.

    ``rows`` entries have ``name``, ``type``, ``output_shape``, ``params``, ``origin``,
    ``lr_mult``, ``decay_mult``, ``trainable``, ``phase``, ``change`` (one of
    :data:`CHANGES`), ``where`` (the spec positions of the edits that touched the layer)
    and ``blobs``.
    """

    net_name: str
    rows: list[dict[str, Any]]
    actions: list[Action] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    weight_copy: dict[str, list[str]] | None = None
    #: the spec's Caffe solver (surgery.solver.caffe.solver_settings), if it names one
    solver: dict[str, Any] | None = None
    #: the pretrained weights the source named: name, url, file, sha256, preprocessing
    pretrained: dict[str, Any] | None = None
    #: how a decoded image becomes the input (surgery.preprocess.Preprocess.to_dict)
    preprocess: dict[str, Any] | None = None
    #: verify's figures (provider, ok, seed, comparisons), once it has run.
    verify: dict[str, Any] | None = None
    #: ``{"inputs": [...], "outputs": [...]}``, each ``{"path", "sha256", "size"}`` (set by apply)
    files: dict[str, list[dict[str, Any]]] | None = None

    @property
    def total_params(self) -> int:
        return sum(row["params"] for row in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(row["params"] for row in self.rows if row["trainable"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "net": self.net_name,
            "outputs": self.outputs,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "layers": self.rows,
            "edits": [a.as_dict() for a in self.actions],
            **({"loss_weights": self.loss_weights} if self.loss_weights else {}),
            **({"weight_copy": self.weight_copy} if self.weight_copy is not None else {}),
            **({"solver": self.solver} if self.solver is not None else {}),
            **({"pretrained": self.pretrained} if self.pretrained is not None else {}),
            **({"preprocess": self.preprocess} if self.preprocess is not None else {}),
            **({"spec": self.spec} if self.spec is not None else {}),
            **({"verify": self.verify} if self.verify is not None else {}),
            **({"files": self.files} if self.files is not None else {}),
        }

    def to_json(self) -> str:
        """Strict JSON (a NaN or infinity anywhere is an error, never a bare ``NaN``)."""
        return json.dumps(_strict(self.as_dict()), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def summary(self) -> str:
        """One line: layers, parameters, outputs (what ``plan -q`` prints)."""
        return terminal_safe(
            f"{len(self.rows)} layers, {self.total_params:,} parameters "
            f"({self.trainable_params:,} trainable); outputs: {', '.join(self.outputs)}"
        )

    def format_table(self, only_params: bool = False) -> str:
        """A fixed-width table for the terminal (``only_params``: layers with weights)."""
        headers = ["layer", "type", "output", "params", "lr", "decay", "train", "origin"]
        lines = []
        for row in self.rows:
            if only_params and not row["params"]:
                continue
            lines.append(
                [
                    row["name"] + (" [train]" if row["phase"] == "train" else ""),
                    row["type"],
                    "x".join(str(d) for d in row["output_shape"]) if row["output_shape"] else "-",
                    f"{row['params']:,}" if row["params"] else "-",
                    _fmt(row["lr_mult"]),
                    _fmt(row["decay_mult"]),
                    ("yes" if row["trainable"] else "frozen") if row["lr_mult"] is not None else "-",
                    row["origin"],
                ]
            )
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.append(self.summary())
        if self.weight_copy is not None:
            out.append(
                "weights by layer name: "
                + "; ".join(
                    f"{what} {len(names)}"
                    + (f" ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})" if names else "")
                    for what, names in self.weight_copy.items()
                )
            )
        if self.preprocess:
            from surgery.preprocess import describe

            out.append(f"input preprocessing: {describe(self.preprocess)}")
        if self.loss_weights:
            out.append("loss weights: " + ", ".join(f"{b} {w:g}" for b, w in self.loss_weights.items()))
        if self.actions:
            out.append("")
            out.append("edits:")
            out += [f"  {op:<10} {what:<13} {who}: {detail}" for op, what, who, detail in _grouped(self.actions)]
        return terminal_safe("\n".join(out))


def format_modules(net: Net) -> str:
    """The composite modules of a torch source, each with the layer computing its output
    (what ``cut { at }``, ``up_to``, ``insert { after }`` or a ``bottom`` mean by its path),
    and those that cannot stand for one layer, with why. Empty when there are none."""
    paths = net.module_paths()
    if not paths and not net.module_refusals:
        return ""
    width = max(len(p) for p in [*paths, *net.module_refusals])
    out = ["modules (a spec may name one where it names a position: cut at, up_to, insert after, bottom):"]
    out += [f"  {path.ljust(width)}  -> {net.producer(net.module_outputs[path]).name}" for path in paths]
    out += [f"  {path.ljust(width)}  (not one position: {why})" for path, why in net.module_refusals.items()]
    return terminal_safe("\n".join(out))


def terminal_safe(text: str) -> str:
    """``text`` with every control and format character but newline and tab written as
    an escape (``\\x1b``): names come from model files, and an escape sequence in a layer
    name must not reach the user's terminal (to move the cursor, retitle the window, or
    hide the lines before it); bidirectional overrides (format characters) likewise."""
    return "".join(
        char if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf") else ascii(char)[1:-1] for char in text
    )


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float written as a string ("nan", "inf"): JSON
    has no such numbers, and the report must stay readable by strict parsers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def _grouped(actions: list[Action]) -> list[tuple[str, str, str, str]]:
    """Actions saying the same thing fold into one line (60 frozen layers), in order of
    first appearance."""
    groups: dict[tuple[str, str, str], list[Action]] = {}
    for action in actions:
        groups.setdefault((action.op, action.what, action.detail), []).append(action)
    lines = []
    for group in groups.values():
        first = group[0]
        who = first.layer if len(group) == 1 else f"{first.layer} ... {group[-1].layer} ({len(group)} layers)"
        lines.append((first.op, first.what, who, first.detail))
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "/".join(f"{v:g}" for v in value)
    return f"{value:g}"


def _change(layer: Layer, actions: list[Action]) -> str:
    """What happened to ``layer``: added / reinitialised / derived / renamed / kept.

    From the edits that named it and from its blobs' origins (a Caffe layer the
    caffemodel had no weights for is filler-initialised without any edit). An ``lr`` edit
    alone leaves a layer kept: its multipliers are shown on their own.
    """
    whats = {a.what for a in actions if a.what != LR}
    origins = {blob.origin.kind for blob in layer.blobs.values()}
    if ADDED in whats:
        # A new layer whose weights were computed from the layers it replaces (collapse).
        return "derived" if origins == {"derived"} else "added"
    if REINITIALISED in whats or "filler" in origins:
        return "reinitialised"
    # A redefinition that kept its weights (replace's KEPT), sliced weights, or a kind of
    # change this report does not know yet: the layer is no longer what the source had.
    if whats - {RENAMED} or origins & {"derived", "resized"}:
        return "derived"
    if RENAMED in whats or any(a.was for a in actions):
        return "renamed"
    return "kept"


def _name_classes(net: Net, rows: list[dict[str, Any]], shapes: dict[str, Any]) -> None:
    """A head's ``classes``: what keep_classes kept (None for a new class), or the
    pretrained weights' categories on an output layer the edits left as it was."""
    categories = list((net.pretrained or {}).get("categories") or [])
    outputs = set(net.outputs)
    for row in rows:
        layer = net.layer(row["name"])
        if layer.name in net.class_names:
            row["classes"] = list(net.class_names[layer.name])
        elif categories and row["change"] == "kept" and outputs & set(layer.outputs):
            shape = shapes.get(layer.outputs[0])
            if isinstance(shape, tuple) and len(shape) == 2 and shape[1] == len(categories):
                row["classes"] = categories


def build_report(net: Net, actions: list[Action] | None = None, spec: dict[str, Any] | None = None) -> Report:
    """The report of ``net`` as it stands (reads shapes only, never weights)."""
    shapes = net.shapes()
    by_layer: dict[str, list[Action]] = {}
    for action in actions or []:
        by_layer.setdefault(action.layer, []).append(action)
    rows = []
    for layer in net.layers():
        lr, decay, trainable = _mults(layer)
        edits = by_layer.get(layer.name, [])
        shape = shapes.get(layer.outputs[0]) if layer.outputs else None
        rows.append(
            {
                "name": layer.name,
                "type": layer.type,
                "output_shape": list(shape) if isinstance(shape, tuple) else None,
                "params": layer.param_count,
                "origin": _origin(layer),
                "lr_mult": lr,
                "decay_mult": decay,
                "trainable": trainable,
                "phase": layer.phase,
                "change": _change(layer, edits),
                "where": list(dict.fromkeys(a.where for a in edits if a.where)),
                "blobs": {
                    role: {
                        "shape": list(b.shape),
                        "origin": str(b.origin),
                        "lr_mult": b.lr_mult,
                        "decay_mult": b.decay_mult,
                        "trainable": b.trainable,
                    }
                    for role, b in layer.blobs.items()
                },
            }
        )
    _name_classes(net, rows, shapes)
    return Report(
        net.name,
        rows,
        list(actions or []),
        net.outputs,
        spec,
        dict(net.loss_weights),
        net.weight_copy,
        net.solver,
        net.pretrained,
        preprocess=net.preprocess.to_dict() if net.preprocess is not None else None,
    )
