"""What a net carries besides its graph: facts the importers, the spec and the edits
attach for the emitters and the report. One record, so that a copy of the net, the
rollback of a failed edit and the nets derived from it (the streaming step, the split
backbone and head) take all of it, and a new fact cannot be forgotten by one of them."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NetInfo:
    """The facts a :class:`surgery.ir.Net` carries besides its layers."""

    #: Training metadata (e.g. Caffe loss weights per output blob).
    loss_weights: dict[str, float] = field(default_factory=dict)
    #: How an importer matched weights to layers ({"copied", "initialised", "ignored"}).
    weight_copy: dict[str, list[str]] | None = None
    #: The spec's Caffe solver settings (surgery.solver.caffe.solver_settings), or None.
    solver: dict[str, Any] | None = None
    #: Pretrained weights the source named (surgery.importers.pretrained), or None.
    pretrained: dict[str, Any] | None = None
    #: How a decoded frame becomes the input (surgery.preprocess.Preprocess), or None
    #: for a net whose input is not an image.
    preprocess: Any = None
    #: Layer name -> what each of its outputs means, where an edit said (keep_classes);
    #: untouched heads take the pretrained weights' categories (see the report).
    class_names: dict[str, list[str | None]] = field(default_factory=dict)
    #: A torch source's composite modules (``layer3.1``, ``blocks.5``): module path ->
    #: the blob that is the module's output, so a spec may name the module where it
    #: names a position in the net.
    module_outputs: dict[str, str] = field(default_factory=dict)
    #: Composite modules that have no single output, with the reason (called twice,
    #: returns two tensors), so naming one says why it cannot stand for a layer.
    module_refusals: dict[str, str] = field(default_factory=dict)

    def copy(self) -> NetInfo:
        """A copy that shares nothing mutable (the preprocessing is immutable)."""
        return dataclasses.replace(
            copy.deepcopy(dataclasses.replace(self, preprocess=None)), preprocess=self.preprocess
        )

    def for_part(self, blobs: set[str], layers: set[str], *, image_input: bool) -> NetInfo:
        """A copy for a net made of part of this one (the split head, the step model):
        entries about blobs and layers it lacks are left out, and the preprocessing only
        when its input is still an image."""
        info = self.copy()
        info.loss_weights = {b: w for b, w in info.loss_weights.items() if b in blobs}
        info.class_names = {name: names for name, names in info.class_names.items() if name in layers}
        info.module_outputs = {path: b for path, b in info.module_outputs.items() if b in blobs}
        if not image_input:
            info.preprocess = None
        return info
