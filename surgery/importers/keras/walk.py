"""Walking a Keras model config (Functional or Sequential, models nested as layers) and
mapping each layer through the registry, after refusing, all at once, what cannot be
mapped: Lambda layers (they hold Python code, which is never run), custom objects, and
layers of classes with no mapping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from surgery.errors import ModelFormatError, ShapeError
from surgery.importers.keras import activations
from surgery.importers.keras.archive import Scope
from surgery.importers.keras.builder import MAPPINGS, Builder, Call, Tensor
from surgery.importers.keras.core import keras_order
from surgery.importers.keras.layout import ir_order, ir_shape
from surgery.interrupts import checkpoint

MODEL_CLASSES = {"Functional", "Sequential", "Model"}
#: Mappings that read a flattened image map as the IR holds it (the features' order does
#: not matter, or the mapping reorders its weights); others get it in Keras's order.
FLAT_READERS = {"Dense", "Dropout", "Activation", "ReLU", "LeakyReLU", "Softmax", "GaussianNoise"}
#: Mappings that already act on each step of a (batch, steps, features) sequence, so that
#: TimeDistributed adds nothing (a Dense on the last axis).
STEPWISE = {"Dense", "Dropout", "Activation", "ReLU", "LeakyReLU", "Softmax", "GaussianNoise"}


# ---------------------------------------------------------------- refusals
def _entries(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every layer entry of a model config, nested models and wrapped layers included."""
    for entry in model.get("config", {}).get("layers", []):
        yield entry
        if entry.get("class_name") in MODEL_CLASSES:
            yield from _entries(entry)
        inner = entry.get("config", {}).get("layer")
        if isinstance(inner, dict):
            yield inner
            if inner.get("class_name") in MODEL_CLASSES:
                yield from _entries(inner)


def _problem(entry: dict[str, Any]) -> str | None:
    class_name = entry.get("class_name", "?")
    config = entry.get("config", {}) if isinstance(entry.get("config"), dict) else {}
    name = config.get("name") or entry.get("name") or "?"
    module = str(entry.get("module") or "keras")
    if class_name == "Lambda":
        return f"Lambda layer {name!r} (it holds Python code; surgery never runs it)"
    # Keras 3 writes "keras.layers" / "keras.src.models.functional"; TensorFlow's Keras 2
    # writes "tf_keras.src.engine.functional" (older: "keras.engine..."): all built in.
    if not module.startswith(("keras", "tf_keras")) or "Custom>" in str(entry.get("registered_name") or ""):
        return f"custom object {name!r} (class {module}.{class_name})"
    if class_name in MODEL_CLASSES or class_name in ("InputLayer", "TimeDistributed"):
        return None
    if class_name not in MAPPINGS:
        return f"layer {name!r} ({class_name}) has no mapping"
    why = activations.unmapped_activation(config["activation"]) if "activation" in config else None
    return f"layer {name!r} ({class_name}): {why}" if why else None


def refuse_unmapped(model: dict[str, Any]) -> None:
    """One error listing every layer that cannot be mapped."""
    problems = [p for p in (_problem(entry) for entry in _entries(model)) if p]
    if problems:
        listing = "\n  ".join(problems)
        raise ModelFormatError(
            f"the Keras model has {len(problems)} layer(s) surgery cannot read:\n  {listing}",
            fix="replace these with built-in Keras layers and re-save the model",
        )


# ------------------------------------------------------------------ walking
def _history(value: Any) -> tuple[str, int, int] | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        name, node, index = value["config"]["keras_history"]
        return (name, int(node), int(index))
    return None


def _resolve(value: Any, tensors: dict[tuple, Tensor], layer: str) -> Any:
    """Call arguments with each recorded Keras tensor replaced by its :class:`Tensor`."""
    key = _history(value)
    if key is not None:
        if key not in tensors:
            raise ModelFormatError(f"layer {layer!r} reads {key[0]!r} before the config defines it")
        return tensors[key]
    if isinstance(value, list):
        return [_resolve(v, tensors, layer) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, tensors, layer) for k, v in value.items()}
    return value


def _node_args(node: Any, tensors: dict[tuple, Tensor], layer: str) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _resolve(node.get("args", []), tensors, layer), _resolve(node.get("kwargs", {}), tensors, layer)
    # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
    found = []
    for item in node:
        key = (item[0], int(item[1]), int(item[2]))
        if key not in tensors:
            raise ModelFormatError(f"layer {layer!r} reads {key[0]!r} before the config defines it")
        found.append(tensors[key])
    return ([found[0]] if len(found) == 1 else [found]), (node[0][3] if node and len(node[0]) > 3 else {})


def _tensors_in(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def _substitute(value: Any, replacements: dict[int, Tensor]) -> Any:
    if isinstance(value, Tensor):
        return replacements.get(id(value), value)
    if isinstance(value, list):
        return [_substitute(v, replacements) for v in value]
    return value


def _endpoints(value: Any) -> list[tuple[str, int, int]]:
    """A model's input_layers / output_layers: one [name, node, index] or a list of them."""
    if value and isinstance(value[0], str):
        return [(value[0], int(value[1]), int(value[2]))]
    return [(v[0], int(v[1]), int(v[2])) for v in value]


class Walker:
    """Maps a model config onto a :class:`Builder`."""

    def __init__(self, builder: Builder, input_shape: tuple[int, ...] | None, nhwc_input: bool = False) -> None:
        self.b = builder
        self.input_shape = input_shape
        self.nhwc_input = nhwc_input
        self.at: str | None = None  # the layer being mapped, for errors about its config

    def model(self, model: dict[str, Any], scope: Scope | None, inputs: list[Tensor] | None) -> list[Tensor]:
        """The output tensors of a Functional or Sequential model (``inputs``: the tensors
        a nested model is called on; None for the top-level model)."""
        if model.get("class_name") == "Sequential":
            return self._sequential(model["config"], scope, inputs)
        return self._functional(model["config"], scope, inputs)

    def _functional(self, config: dict[str, Any], scope: Scope | None, inputs: list[Tensor] | None) -> list[Tensor]:
        tensors: dict[tuple, Tensor] = {}
        given = dict(zip((e[0] for e in _endpoints(config["input_layers"])), inputs or []))
        for entry in config["layers"]:
            name = entry.get("name") or entry["config"]["name"]
            child = scope.child(entry["class_name"], name) if scope is not None else None
            if entry["class_name"] == "InputLayer":
                tensors[(name, 0, 0)] = given[name] if inputs is not None else self._input(entry["config"], name)
                continue
            nodes = entry.get("inbound_nodes", [])
            if len(nodes) != 1:
                raise ModelFormatError(
                    f"Keras layer {name!r} is called {len(nodes)} times (a shared layer)",
                    fix="give each call its own layer",
                )
            args, kwargs = _node_args(nodes[0], tensors, name)
            outputs = self._layer(entry, name, child, args, kwargs)
            for index, tensor in enumerate(outputs):
                tensors[(name, 0, index)] = tensor
        return [tensors[key] for key in _endpoints(config["output_layers"])]

    def _sequential(self, config: dict[str, Any], scope: Scope | None, inputs: list[Tensor] | None) -> list[Tensor]:
        layers = list(config["layers"])
        if inputs is None:
            if layers and layers[0]["class_name"] == "InputLayer":
                first = layers.pop(0)
                current = self._input(first["config"], first["config"]["name"])
            else:
                shape = _declared_shape(layers[0]["config"] if layers else {})
                current = self._input({"batch_shape": shape}, f"{config.get('name', 'sequential')}_input")
        else:
            current = inputs[0]
            if layers and layers[0]["class_name"] == "InputLayer":
                layers.pop(0)
        for entry in layers:
            name = entry["config"]["name"]
            child = scope.child(entry["class_name"], name) if scope is not None else None
            current = self._layer(entry, name, child, [current], {})[0]
        return [current]

    def _layer(
        self, entry: dict[str, Any], name: str, scope: Scope | None, args: list[Any], kwargs: dict[str, Any]
    ) -> list[Tensor]:
        self.at = name
        checkpoint()
        class_name = entry["class_name"]
        inputs = _tensors_in(args)
        if class_name in MODEL_CLASSES:
            return self.model(entry, scope, inputs)
        if class_name == "TimeDistributed":
            return self._time_distributed(entry, name, scope, inputs)
        if any(t.flattened for t in inputs) and class_name not in FLAT_READERS:
            # A flattened image map is in the IR's (C, H, W) order; this layer needs Keras's.
            reordered = {id(t): keras_order(self.b, t, name) for t in inputs if t.flattened}
            args = _substitute(args, reordered)
            inputs = [reordered.get(id(t), t) for t in inputs]
        call = Call(name, class_name, entry.get("config", {}), scope, args, kwargs)
        out = MAPPINGS[class_name](self.b, call, inputs)
        return out if isinstance(out, list) else [out]

    def _time_distributed(
        self, entry: dict[str, Any], name: str, scope: Scope | None, inputs: list[Tensor]
    ) -> list[Tensor]:
        """The wrapped layer (or model) runs per frame: its IR layers are marked per-frame
        and see one frame, ``(N, ...)``; the emitters fold the time axis into the batch.
        A wrapped single layer is named after the wrapper."""
        x = inputs[0]
        if self.b.frames is not None or x.rank < 3 or len(inputs) != 1:
            raise ModelFormatError(
                f"Keras layer {name!r} (TimeDistributed): expects one (batch, steps, ...) input "
                "outside any other TimeDistributed",
                subject=name,
            )
        inner = entry["config"]["layer"]
        if x.rank == 3 and x.channel_at is None and inner["class_name"] in STEPWISE:
            return self._layer(inner, name, scope.attribute("layer") if scope is not None else None, [x], {})
        steps = x.shape[1]
        frame = Tensor(
            x.blob, (x.shape[0], *x.shape[2:]), None if x.channel_at is None else x.channel_at - 1, x.flattened
        )
        inner_name = inner.get("config", {}).get("name") or name
        self.b.frames = steps
        try:
            if inner["class_name"] in MODEL_CLASSES:
                inner_scope = scope.attribute("layer", inner_name) if scope is not None else None
                outputs = self.model(inner, inner_scope, [frame])
            else:
                inner_scope = scope.attribute("layer", inner_name) if scope is not None else None
                outputs = self._layer(inner, name, inner_scope, [frame], {})
        finally:
            self.b.frames = None
        out = outputs[0]
        return [
            Tensor(
                out.blob,
                (out.shape[0], steps, *out.shape[1:]),
                None if out.channel_at is None else out.channel_at + 1,
                out.flattened,
            )
        ]

    def _input(self, config: dict[str, Any], name: str) -> Tensor:
        declared = config.get("batch_shape") or config.get("batch_input_shape")
        if declared is None:
            raise ModelFormatError(f"input {name!r} declares no shape")
        shape = list(declared)
        if self.input_shape is not None:
            given = list(self.input_shape)
            if len(given) != len(shape) or any(d is not None and d != g for d, g in zip(shape[1:], given[1:])):
                raise ShapeError(
                    f"input {name!r} has shape {shape} in the Keras file, not {given}",
                    fix="give input_shape in Keras's order (batch, height, width, channels)",
                )
            shape = given
        shape[0] = shape[0] or self.b.batch
        if any(d is None for d in shape):
            raise ShapeError(
                f"input {name!r} has unknown axes {declared}",
                fix="give input_shape in Keras's order, e.g. [1, 224, 224, 3]",
            )
        sizes = tuple(int(d) for d in shape)
        channel_at = 1 if len(sizes) == 4 else (2 if len(sizes) == 5 else None)
        nhwc = self.nhwc_input and channel_at is not None
        params: dict[str, Any] = {"shape": sizes if nhwc else ir_shape(sizes, channel_at)}
        if len(sizes) == 5:  # a clip (N, T, H, W, C): the time axis is 1
            params["time_axis"] = 1
        blob = self.b.add(name, "Input", [], params)
        if nhwc:  # Keras-style arrays in, one transpose to the IR's channels-first layout
            blob = self.b.add(f"{name}/nchw", "Permute", [blob], {"order": ir_order(len(sizes), channel_at)})
        return self.b.tensor(blob, sizes, channel_at)


def _declared_shape(config: dict[str, Any]) -> list[Any]:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None:
        raise ModelFormatError("the Sequential model declares no input shape", fix="build the model on an Input")
    return list(shape)
