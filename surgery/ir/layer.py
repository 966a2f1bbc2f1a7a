"""Layer records: the nodes of the IR graph."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from surgery.ir.blob import ParamBlob


@dataclass
class Layer:
    """One layer of a net, close to Caffe's ``LayerParameter``.

    Attributes:
        name: unique name (Caffe layer name, torch module path, ONNX node name).
        type: registered layer type (``Convolution``, ``InnerProduct``, ...).
        inputs: ordered input blob names (order matters for Concat, Eltwise).
        outputs: ordered output blob names.
        params: hyper-parameters, plain Python values, meaning defined by the type.
        blobs: parameter blobs by role name (``weight``, ``bias``, ``running_mean``...),
            in the order the format stores them.
        phase: ``None`` when the layer runs in every phase, ``"train"`` for layers that
            exist only while training (GoogLeNet's auxiliary heads).
        per_frame: the layer runs on every frame of a clip: its blobs carry a time axis
            at 1, ``(N, T, ...)``, its type sees ``(N, ...)`` (set by ``sequence``; the
            emitters fold T into the batch around these layers).
        extra: format-specific payload an importer needs to round-trip the layer (the
            module of an opaque layer, the callable of an opaque call).
    """

    name: str
    type: str
    # Every field past these two by keyword: a positional copy once put ``extra`` into
    # ``per_frame``.
    _: KW_ONLY
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, ParamBlob] = field(default_factory=dict)
    phase: str | None = None
    per_frame: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        """Number of trainable-parameter elements (buffers excluded)."""
        return sum(b.numel for b in self.blobs.values() if b.trainable)
