"""What a Keras layer's mapping reads from and adds to: tensors with their layout, the
IR net under construction, lazy blobs over the file's variables, and the registry of
mappings (one function per Keras layer class, registered by class name)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from surgery.errors import ModelFormatError, ShapeError
from surgery.importers.keras.archive import Scope, Variable
from surgery.importers.keras.layout import ir_axis, ir_shape
from surgery.ir import Layer, Net, ParamBlob, Shape
from surgery.layers import layer_type, registered_types
from surgery.lazy_torch import torch


@dataclass(frozen=True)
class Tensor:
    """A Keras tensor as the IR holds it.

    Attributes:
        blob: the IR blob.
        shape: the Keras shape (batch axis first, concrete).
        channel_at: where the IR put Keras's last (channel) axis; None = Keras order.
        flattened: for a 2-D tensor made by flattening an (H, W, C) map, that map's
            shape: the IR's features are in C, H, W order, Keras's in H, W, C order.
    """

    blob: str
    shape: tuple[int, ...]
    channel_at: int | None = None
    flattened: tuple[int, ...] | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def axis(self, axis: int) -> int:
        """The IR axis of Keras axis ``axis``."""
        return ir_axis(axis, self.rank, self.channel_at)


@dataclass
class Call:
    """One Keras layer being mapped: its config, its variables and its call arguments."""

    name: str
    class_name: str
    config: dict[str, Any]
    scope: Scope | None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def refuse(self, why: str, fix: str | None = None) -> ModelFormatError:
        return ModelFormatError(f"Keras layer {self.name!r} ({self.class_name}): {why}", fix=fix, subject=self.name)


Mapping = Callable[["Builder", Call, list[Tensor]], "Tensor | list[Tensor]"]
MAPPINGS: dict[str, Mapping] = {}


def keras_layer(*class_names: str) -> Callable[[Mapping], Mapping]:
    """Register a function mapping Keras layers of these classes. Twice is an error."""

    def register(function: Mapping) -> Mapping:
        for class_name in class_names:
            if class_name in MAPPINGS:
                raise TypeError(f"Keras class {class_name} is mapped twice")
            MAPPINGS[class_name] = function
        return function

    return register


def has_type(name: str) -> bool:
    """Whether this build of surgery has the layer type ``name``."""
    return name in registered_types()


class Builder:
    """The net under construction and the tensors made so far.

    Inside a TimeDistributed wrapper (``frames`` set), layers are added per frame: their
    blobs carry the time axis at 1, ``(N, T, ...)``, while the mappings, like the
    wrapped Keras layer, see one frame, ``(N, ...)`` (:meth:`shape`).
    """

    def __init__(self, net: Net, batch: int) -> None:
        self.net = net
        self.batch = batch
        self.shapes: dict[str, Shape] = {}  # the IR's shapes, time axis included
        self.frames: int | None = None
        self._counts: collections.Counter = collections.Counter()

    def shape(self, blob: str) -> Shape:
        """A blob's IR shape as the current layer sees it (one frame, per frame)."""
        shape = tuple(self.shapes[blob])
        return (shape[0], *shape[2:]) if self.frames is not None else shape

    # ------------------------------------------------------------- layers
    def unique(self, name: str) -> str:
        candidate = name
        while candidate in self.net or self.net.has_blob(candidate):
            self._counts[name] += 1
            candidate = f"{name}_{self._counts[name]}"
        return candidate

    def add(
        self,
        name: str,
        type_name: str,
        inputs: list[str],
        params: dict[str, Any] | None = None,
        blobs: dict[str, ParamBlob] | None = None,
    ) -> str:
        """Add one IR layer (its output blob has the layer's name); returns that blob."""
        name = self.unique(name)
        layer = Layer(
            name,
            type_name,
            inputs=list(inputs),
            outputs=[name],
            params=params or {},
            blobs=blobs or {},
            per_frame=self.frames is not None,
        )
        self.net.add_layer(layer)
        out = layer_type(type_name).infer_shapes(layer, [self.shape(b) for b in inputs])[0]
        if out is None:
            raise ShapeError(f"the shape of {name!r} ({type_name}) cannot be known here", subject=name)
        self.shapes[name] = out if self.frames is None else (out[0], self.frames, *out[1:])
        return name

    def tensor(
        self, blob: str, shape: tuple[int, ...], channel_at: int | None = None, flattened: tuple[int, ...] | None = None
    ) -> Tensor:
        """A Keras tensor for ``blob``, checked against the IR's shape for it."""
        tensor = Tensor(blob, tuple(shape), channel_at, flattened)
        expected = ir_shape(tensor.shape, channel_at)
        if self.shape(blob) != expected:
            raise ModelFormatError(f"internal layout mismatch at {blob!r}: IR {self.shape(blob)}, expected {expected}")
        return tensor

    def like(self, blob: str, source: Tensor) -> Tensor:
        """A tensor laid out as ``source``, with the IR blob's shape."""
        shape = self.shape(blob)
        if source.channel_at is None:
            keras = tuple(shape)
        else:
            at = source.channel_at
            keras = (*shape[:at], *shape[at + 1 :], shape[at])
        return self.tensor(blob, keras, source.channel_at, source.flattened)

    # -------------------------------------------------------------- blobs
    def param(
        self,
        variable: Variable,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        shape: tuple[int, ...] | None = None,
        *,
        trainable: bool = True,
        **kwargs: Any,
    ) -> ParamBlob:
        """A lazy blob over a stored variable: read (viewed in the mapped file when it can
        be), transformed (a transpose, made contiguous) on first use."""
        out_shape = tuple(shape) if shape is not None else variable.shape
        dtype = variable.dtype

        def load() -> torch.Tensor:
            values = torch.from_numpy(variable.read())
            return transform(values).contiguous() if transform else values

        return ParamBlob.lazy(out_shape, dtype, load, trainable=trainable, **kwargs)

    def variable(
        self, call: Call, index: int, name: str, shape: tuple[int, ...] | None = None, attribute: str | None = None
    ) -> Variable:
        """Variable ``index`` (``name`` in legacy files) of a layer, or of its sub-object
        ``attribute`` (an RNN's ``cell``), its shape checked."""
        if call.scope is None:
            raise call.refuse("its weights are not in the file")
        scope = call.scope.attribute(attribute) if attribute else call.scope
        variable = scope.variable(index, name, call.name)
        if shape is not None and variable.shape != tuple(shape):
            raise call.refuse(
                f"stored {name} has shape {list(variable.shape)}, the config implies {list(shape)}",
                fix="the file's config and weights disagree: re-save the model",
            )
        return variable
