"""One Caffe ``LayerParameter`` to an IR :class:`Layer` (hyper-parameters, param specs,
fillers). Spec files write new layers in this syntax; the Caffe importer uses it for
every layer of a prototxt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from surgery.errors import SpecError, SurgeryError
from surgery.ir import Layer
from surgery.ir.blob import check_multiplier
from surgery.layers import layer_type
from surgery.math.fillers import Filler


@dataclass
class CaffeLayer:
    """A layer read from Caffe syntax, before it has blobs.

    Attributes:
        layer: the IR layer (no blobs yet).
        fillers: fillers the message names, by blob role.
        param_specs: ``(lr_mult, decay_mult)`` per blob position, from ``param { }``.
    """

    layer: Layer
    fillers: dict[str, Filler] = field(default_factory=dict)
    param_specs: list[tuple[float, float]] = field(default_factory=list)


def layer_from_caffe(message: Any) -> CaffeLayer:
    """Convert a ``surgery.caffe.LayerParameter`` message.

    Raises:
        SpecError: no name, or a type surgery does not know (with a did-you-mean).
    """
    if not message.name:
        raise SpecError("a layer needs a name", fix='add `name: "..."` to the layer')
    kind = layer_type(message.type)
    if not kind.caffe_syntax:
        raise SpecError(
            f"layer {message.name!r}: {kind.name} layers have no Caffe syntax (their parameters come "
            "only from imported models)",
            subject=message.name,
            fix="use a type written with a *_param, e.g. Pooling, InnerProduct, Reshape",
        )
    param_field = kind.caffe_param_field
    params: dict[str, Any] = {}
    fillers: dict[str, Filler] = {}
    if param_field is not None:
        param = getattr(message, param_field)
        try:
            params = kind.from_caffe(param)
            fillers = {role: Filler.from_proto(f) for role, f in kind.caffe_fillers(param).items()}
        except SurgeryError as error:  # say which layer, and point at it in the spec
            error.message = f"layer {message.name!r} ({kind.name}): {error.message}"
            error.subject = error.subject or message.name
            raise
    layer = Layer(
        name=message.name,
        type=kind.name,
        inputs=list(message.bottom),
        outputs=list(message.top),
        params=params,
    )
    specs = [
        (
            check_multiplier(p.lr_mult, f"lr_mult of layer {message.name!r}", message.name),
            check_multiplier(p.decay_mult, f"decay_mult of layer {message.name!r}", message.name),
        )
        for p in message.param
    ]
    return CaffeLayer(layer, fillers, specs)
