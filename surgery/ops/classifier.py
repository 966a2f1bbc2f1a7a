"""``classifier``: rename and/or resize classifier layers, with fresh filler weights.

Several layers change in one operation (GoogLeNet's ``loss1/classifier``,
``loss2/classifier``, ``loss3/classifier``). As in Caffe, a renamed layer gets no
pretrained weights; a resized one cannot keep them either; both say so in the report.
"""

from __future__ import annotations

from typing import Any

from surgery.errors import SpecError
from surgery.ir import Net
from surgery.layers.new_blobs import init_new_blobs
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
    if not op.rename and not op.HasField("num_output"):
        raise SpecError("classifier changes nothing", fix="set num_output, rename, or both", subject=op.layer[0])
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
        if op.HasField("num_output"):
            layer.params["num_output"] = op.num_output
            notes.append(f"num_output {old_outputs} -> {op.num_output}")
        mults = [(b.lr_mult, b.decay_mult) for b in layer.blobs.values()]
        layer.blobs = {}
        notes += init_new_blobs(net, layer, ctx.seed, fillers, mults)
        if new_name == name:
            notes.append("re-initialised: a resized layer cannot keep its pretrained weights")
        actions.append(
            Action("classifier", new_name, REINITIALISED, "; ".join(notes), was=name if new_name != name else "")
        )
        if op.HasField("num_output") and op.num_output != old_outputs:
            actions += propagate_resize(net, layer, op.propagate, ctx)
    net.shapes()
    return actions
