"""``classifier``: rename and/or resize classifier layers, with fresh filler weights.

Several layers change in one operation (GoogLeNet's ``loss1/classifier``,
``loss2/classifier``, ``loss3/classifier``). As in Caffe, a renamed layer gets no
pretrained weights; a resized one cannot keep them either; both say so in the report.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from surgery.errors import SpecError, did_you_mean
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.layers.new_blobs import init_new_blobs
from surgery.lazy_torch import torch
from surgery.math.fillers import Filler
from surgery.ops.base import REINITIALISED, Action, OpContext, register_op
from surgery.ops.propagate import propagate_resize

CLASSIFIER_TYPES = ("InnerProduct", "Convolution")


def _check(net: Net, op: Any) -> None:
    if not op.layer:
        raise SpecError("classifier needs at least one `layer`", fix='add layer: "fc8" (or several)')
    if op.rename and len(op.rename) != len(op.layer):
        raise SpecError(
            f"classifier has {len(op.layer)} layer(s) but {len(op.rename)} rename(s)",
            fix="give one rename per layer, in the same order, or none",
        )
    if not op.rename and not op.HasField("num_output") and not op.keep_classes:
        raise SpecError("classifier changes nothing", fix="set num_output, rename or keep_classes", subject=op.layer[0])
    if op.HasField("num_output") and op.num_output == 0:
        raise SpecError("num_output must be at least 1")
    new_names = list(op.rename)
    for index, name in enumerate(op.layer):
        layer = net.layer(name)
        if layer.type not in CLASSIFIER_TYPES:
            raise SpecError(
                f"{name!r} is a {layer.type} layer; classifier changes InnerProduct or Convolution layers",
                fix="name the fully connected layer that makes the class scores",
                subject=name,
            )
        if new_names and new_names[index] != name and new_names[index] in net:
            raise SpecError(
                f"cannot rename {name!r} to {new_names[index]!r}: that name is taken", subject=new_names[index]
            )
    if len(set(new_names)) != len(new_names):
        raise SpecError("two layers would get the same new name")
    if op.keep_classes and op.HasField("num_output") and op.num_output < len(op.keep_classes):
        raise SpecError(
            f"num_output {op.num_output} is fewer than the {len(op.keep_classes)} classes kept",
            fix="leave num_output out (the kept classes alone) or raise it",
        )


def _kept_rows(net: Net, layer: Layer, op: Any) -> list[int]:
    """The rows of ``layer`` that ``keep_classes`` names, in its order."""
    categories = list((net.pretrained or {}).get("categories") or [])
    count = layer.params["num_output"]
    rows: list[int] = []
    for entry in op.keep_classes:
        if entry.strip().isdigit():
            row = int(entry)
            if row >= count:
                raise SpecError(f"class {row} is not a row of {layer.name!r} ({count} classes)", subject=entry)
        elif not categories:
            raise SpecError(
                f"class {entry!r} is a name, but the source names no pretrained weights with categories",
                fix='give row indices (keep_classes: "281"), or name the weights with pretrained:',
                subject=entry,
            )
        elif entry not in categories:
            raise SpecError(
                f"{entry!r} is not one of the pretrained weights' {len(categories)} categories",
                fix=did_you_mean(entry, categories) or "see report.json's pretrained.categories",
                subject=entry,
            )
        else:
            if len(categories) != count:
                raise SpecError(
                    f"{layer.name!r} has {count} outputs, the weights {len(categories)} categories",
                    fix="keep classes by row index, or name the layer that makes the pretrained class scores",
                    subject=entry,
                )
            row = categories.index(entry)
        if row in rows:
            raise SpecError(f"class {entry!r} is kept twice", subject=entry)
        rows.append(row)
    return rows


def _keep(old: ParamBlob, fresh: ParamBlob, rows: list[int]) -> torch.Tensor:
    """The kept rows of the pretrained blob, exactly, then the fresh rows after them."""
    kept = old.data.index_select(0, torch.tensor(rows))
    if fresh.shape[0] == len(rows):
        return kept
    return torch.cat([kept.to(fresh.dtype), fresh.data[len(rows) :]])


@register_op("classifier")
def classifier(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Rename and/or resize each layer in ``op.layer``, re-initialising its blobs."""
    _check(net, op)
    fillers = {}
    if op.HasField("weight_filler"):
        fillers["weight"] = Filler.from_proto(op.weight_filler)
    if op.HasField("bias_filler"):
        fillers["bias"] = Filler.from_proto(op.bias_filler)
    actions = []
    for index, name in enumerate(op.layer):
        layer = net.layer(name)
        notes = []
        new_name = op.rename[index] if op.rename else name
        if new_name != name:
            net.rename_layer(name, new_name)
            notes.append(f"renamed from {name!r}")
        old_outputs = layer.params["num_output"]
        rows = _kept_rows(net, layer, op) if op.keep_classes else []
        if op.HasField("num_output") or rows:
            layer.params["num_output"] = op.num_output if op.HasField("num_output") else len(rows)
            notes.append(f"num_output {old_outputs} -> {layer.params['num_output']}")
        mults = [(b.lr_mult, b.decay_mult) for b in layer.blobs.values()]
        old_blobs, layer.blobs = layer.blobs, {}
        notes += init_new_blobs(net, layer, ctx.seed, fillers, mults)
        if rows:
            for role, fresh in list(layer.blobs.items()):
                layer.blobs[role] = dataclasses.replace(
                    fresh,
                    _loader=functools.partial(_keep, old_blobs[role], fresh, rows),
                    _array_loader=None,
                    origin=Origin("resized", f"pretrained rows {rows}, then {fresh.origin.detail}"),
                )
            notes.append(f"kept {len(rows)} pretrained classes exactly: rows {rows}")
            categories = list((net.pretrained or {}).get("categories") or [])
            kept: list[str | None] = [categories[r] if r < len(categories) else str(r) for r in rows]
            net.class_names[new_name] = kept + [None] * (layer.params["num_output"] - len(rows))
        else:
            net.class_names.pop(name, None)
            if new_name == name:
                notes.append("re-initialised: a resized layer cannot keep its pretrained weights")
        actions.append(
            Action("classifier", new_name, REINITIALISED, "; ".join(notes), was=name if new_name != name else "")
        )
        if layer.params["num_output"] != old_outputs:
            actions += propagate_resize(net, layer, op.propagate, ctx)
    net.shapes()
    return actions
