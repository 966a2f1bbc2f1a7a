"""The IR: a net is one networkx graph of layers, owned and mutated only by :class:`Net`.

Nodes are layer names (attribute ``layer`` holds the :class:`Layer`); an edge
``producer -> consumer`` exists for every blob the consumer reads, keyed by
``(blob, input_index)``. The layer records hold the ordered blob names; the edges are
the index networkx runs its algorithms on, and only this class keeps the two in step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, cast

import networkx as nx

from surgery.errors import ShapeError, SpecError, unknown_layer
from surgery.ir.budget import check_bytes, tensor_bytes
from surgery.ir.info import NetInfo
from surgery.ir.kinds import kind_of
from surgery.ir.layer import Layer
from surgery.lazy_torch import torch

Shape = tuple[int, ...]


class Net:
    """A network: layers connected by named blobs.

    Example:
        >>> net = Net("tiny")
        >>> net.add_layer(Layer("data", "Input", outputs=["data"], params={"shape": (1, 3, 8, 8)}))
        >>> net.add_layer(Layer("relu", "ReLU", inputs=["data"], outputs=["relu"]))
        >>> [layer.name for layer in net.layers()]
        ['data', 'relu']
    """

    def __init__(self, name: str = "net") -> None:
        self.name = name
        self.graph = nx.MultiDiGraph()
        self._producer: dict[str, str] = {}
        self._order = itertools.count()
        self._outputs: list[str] | None = None
        self._shapes: dict[str, Shape | None] | None = None
        self._names: list[str] | None = None  # execution order, cached until the graph changes
        #: Layers added at the end since shapes were inferred: only they are inferred next
        #: time (appending n layers one by one then costs n, not n squared).
        self._pending: list[str] = []
        #: Everything else the net carries, in one record (see :class:`NetInfo`); the
        #: properties below read and write its fields.
        self.info = NetInfo()

    # ------------------------------------------------------------- net info
    @property
    def loss_weights(self) -> dict[str, float]:
        """Training metadata (e.g. Caffe loss weights per output blob)."""
        return self.info.loss_weights

    @loss_weights.setter
    def loss_weights(self, value: dict[str, float]) -> None:
        self.info.loss_weights = value

    @property
    def weight_copy(self) -> dict[str, list[str]] | None:
        """How an importer matched weights to layers."""
        return self.info.weight_copy

    @weight_copy.setter
    def weight_copy(self, value: dict[str, list[str]] | None) -> None:
        self.info.weight_copy = value

    @property
    def solver(self) -> dict[str, Any] | None:
        """The spec's Caffe solver settings, or None."""
        return self.info.solver

    @solver.setter
    def solver(self, value: dict[str, Any] | None) -> None:
        self.info.solver = value

    @property
    def pretrained(self) -> dict[str, Any] | None:
        """Pretrained weights the source named, or None."""
        return self.info.pretrained

    @pretrained.setter
    def pretrained(self, value: dict[str, Any] | None) -> None:
        self.info.pretrained = value

    @property
    def preprocess(self) -> Any:
        """How a decoded frame becomes the input, or None."""
        return self.info.preprocess

    @preprocess.setter
    def preprocess(self, value: Any) -> None:
        self.info.preprocess = value

    @property
    def class_names(self) -> dict[str, list[str | None]]:
        """Layer name -> what each of its outputs means, where an edit said."""
        return self.info.class_names

    @class_names.setter
    def class_names(self, value: dict[str, list[str | None]]) -> None:
        self.info.class_names = value

    @property
    def module_outputs(self) -> dict[str, str]:
        """A torch source's composite modules: module path -> its output blob."""
        return self.info.module_outputs

    @module_outputs.setter
    def module_outputs(self, value: dict[str, str]) -> None:
        self.info.module_outputs = value

    @property
    def module_refusals(self) -> dict[str, str]:
        """Composite modules without a single output, with the reason."""
        return self.info.module_refusals

    @module_refusals.setter
    def module_refusals(self, value: dict[str, str]) -> None:
        self.info.module_refusals = value

    # ----------------------------------------------------------------- queries
    def __contains__(self, name: str) -> bool:
        return name in self.graph

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; a did-you-mean error when there is none."""
        try:
            return self.graph.nodes[name]["layer"]
        except KeyError:
            if name in self.module_outputs or name in self.module_refusals:
                raise SpecError(
                    f"{name!r} is a module of the source, not a layer; this edit needs a layer",
                    fix=f"name one of its layers, or select them all with the glob '{name}.*'",
                    subject=name,
                ) from None
            raise unknown_layer(name, self.graph.nodes) from None

    def layer_names(self) -> list[str]:
        """Layer names in execution order."""
        if self._names is None:
            self._names = list(
                nx.lexicographical_topological_sort(self.graph, key=lambda n: self.graph.nodes[n]["order"])
            )
        return list(self._names)

    def layers(self) -> Iterator[Layer]:
        """Layers in execution order (topological, ties broken by insertion order)."""
        for name in self.layer_names():
            yield self.graph.nodes[name]["layer"]

    def producer(self, blob: str) -> Layer:
        """The layer that writes ``blob``."""
        try:
            return self.layer(self._producer[blob])
        except KeyError:
            raise unknown_layer(blob, self._producer, what="blob") from None

    def has_blob(self, blob: str) -> bool:
        return blob in self._producer

    def blob_names(self) -> list[str]:
        return list(self._producer)

    def consumers(self, blob: str) -> list[tuple[Layer, int]]:
        """Every ``(layer, input_index)`` that reads ``blob``."""
        producer = self._producer[blob]
        found = []
        for _, consumer, (edge_blob, index) in self.graph.out_edges(producer, keys=True):
            if edge_blob == blob:
                found.append((self.layer(consumer), index))
        return sorted(found, key=lambda item: (self.graph.nodes[item[0].name]["order"], item[1]))

    def module_output(self, path: str) -> str | None:
        """The blob computed as module ``path``'s output, or None when ``path`` is no
        module of the source. The entry is checked now: an earlier edit may have dropped
        that blob, and a module with no single output is refused with the reason.

        Example:
            >>> net = Net("tiny")
            >>> net.add_layer(Layer("data", "Input", outputs=["data"], params={"shape": (1, 4)}))
            >>> net.add_layer(Layer("add", "Eltwise", inputs=["data", "data"], outputs=["add"]))
            >>> net.module_outputs["block"] = "add"
            >>> net.module_output("block")
            'add'
        """
        if path in self.module_refusals:
            raise SpecError(
                f"{path!r} is a module of the source, but it cannot stand for one layer: {self.module_refusals[path]}",
                fix="name one of its layers instead (`surgery inspect` lists them)",
                subject=path,
            )
        blob = self.module_outputs.get(path)
        if blob is None:
            return None
        if blob not in self._producer:
            raise SpecError(
                f"module {path!r} computed blob {blob!r}, which an earlier edit removed from the net",
                fix="name a layer that is still in the net, or move this edit before the one that removed it",
                subject=path,
            )
        return blob

    def module_paths(self) -> list[str]:
        """The module paths a spec can still name (their output is in the net)."""
        return [path for path, blob in self.module_outputs.items() if blob in self._producer]

    def input_layers(self) -> list[Layer]:
        return [layer for layer in self.layers() if layer.type == "Input"]

    @property
    def outputs(self) -> list[str]:
        """The net's output blobs: set explicitly, or every blob nothing consumes."""
        if self._outputs is not None:
            return list(self._outputs)
        consumed = {blob for _, _, (blob, _) in self.graph.edges(keys=True)}
        return [blob for layer in self.layers() for blob in layer.outputs if blob not in consumed]

    def set_outputs(self, blobs: Iterable[str]) -> None:
        blobs = list(blobs)
        for blob in blobs:
            if blob not in self._producer:
                raise unknown_layer(blob, self._producer, what="blob")
        self._outputs = blobs

    def outputs_for(self, phase: str | None) -> list[str]:
        """Output blobs present in ``phase`` (``None`` = deploy: no train-only layers)."""
        if phase == "train":
            return self.outputs
        return [blob for blob in self.outputs if self.producer(blob).phase != "train"]

    def ancestors(self, name: str) -> set[str]:
        """Names of every layer ``name`` depends on (not including itself)."""
        self.layer(name)
        return nx.ancestors(self.graph, name)

    def descendants(self, name: str) -> set[str]:
        """Names of every layer that depends on ``name`` (not including itself)."""
        self.layer(name)
        return nx.descendants(self.graph, name)

    # --------------------------------------------------------------- mutation
    def add_layer(self, layer: Layer) -> Layer:
        """Add a layer whose input blobs already exist. Blob names must be new."""
        if layer.name in self.graph:
            raise SpecError(
                f"a layer named {layer.name!r} already exists", fix="choose another name", subject=layer.name
            )
        for blob in layer.inputs:
            if blob not in self._producer:
                raise unknown_layer(blob, self._producer, what="blob")
        for blob in layer.outputs:
            if blob in self._producer:
                raise SpecError(
                    f"layer {layer.name!r} writes blob {blob!r}, which layer {self._producer[blob]!r} already writes",
                    fix="give the new layer's top a new name",
                    subject=layer.name,
                )
        self.graph.add_node(layer.name, layer=layer, order=next(self._order))
        for blob in layer.outputs:
            self._producer[blob] = layer.name
        for index, blob in enumerate(layer.inputs):
            self.graph.add_edge(self._producer[blob], layer.name, key=(blob, index))
        self._added_last(layer.name)
        return layer

    def _added_last(self, name: str) -> None:
        """Keep the caches after adding ``name``: it reads only existing blobs and has the
        newest insertion order, so it runs last, and only its shapes are new."""
        if self._names is None or self._shapes is None:
            self.invalidate()
            return
        self._names.append(name)
        self._pending.append(name)

    def invalidate_layer(self, name: str) -> None:
        """Forget the cached shapes of layer ``name`` only (its blobs changed), when
        nothing reads it yet; otherwise everything (see :meth:`invalidate`)."""
        if self._shapes is None or self._names is None or self.graph.out_degree(name):
            self.invalidate()
        elif name not in self._pending:
            self._pending.append(name)

    def remove_layer(self, name: str) -> Layer:
        """Remove a layer. Nothing may still read its outputs (rewire first)."""
        layer = self.layer(name)
        for blob in layer.outputs:
            readers = [c.name for c, _ in self.consumers(blob)]
            if readers:
                raise SpecError(
                    f"cannot remove {name!r}: {', '.join(readers)} still read its output {blob!r}",
                    subject=name,
                )
        self.graph.remove_node(name)
        for blob in layer.outputs:
            del self._producer[blob]
        if self._outputs is not None:
            self._outputs = [b for b in self._outputs if b not in layer.outputs]
        self.invalidate()
        return layer

    def set_input(self, consumer: str, index: int, blob: str) -> None:
        """Make input ``index`` of layer ``consumer`` read ``blob``."""
        layer = self.layer(consumer)
        old = layer.inputs[index]
        self.graph.remove_edge(self._producer[old], consumer, key=(old, index))
        layer.inputs[index] = blob
        self.graph.add_edge(self._producer[blob], consumer, key=(blob, index))
        if nx.has_path(self.graph, consumer, self._producer[blob]) and self._producer[blob] != consumer:
            raise SpecError(f"rewiring {consumer!r} to read {blob!r} would make a cycle", subject=consumer)
        self.invalidate()

    def redirect_consumers(self, old_blob: str, new_blob: str, only: Iterable[str] | None = None) -> list[str]:
        """Make the consumers of ``old_blob`` read ``new_blob``; returns their names.

        The producer of ``new_blob`` is never rewired (so a layer inserted after
        ``old_blob`` keeps reading it). Net outputs naming ``old_blob`` follow.
        """
        keep = set(only) if only is not None else None
        skip = self._producer.get(new_blob)
        moved = []
        for consumer, index in self.consumers(old_blob):
            if consumer.name == skip or (keep is not None and consumer.name not in keep):
                continue
            self.set_input(consumer.name, index, new_blob)
            moved.append(consumer.name)
        if keep is None and self._outputs is not None:
            self._outputs = [new_blob if b == old_blob else b for b in self._outputs]
        return moved

    def rename_layer(self, old: str, new: str) -> None:
        """Rename a layer (its blobs keep their names unless they were named after it)."""
        if new in self.graph:
            raise SpecError(f"cannot rename {old!r} to {new!r}: that name is taken", subject=new)
        layer = self.layer(old)
        nx.relabel_nodes(self.graph, {old: new}, copy=False)
        layer.name = new
        for blob, producer in list(self._producer.items()):
            if producer == old:
                self._producer[blob] = new
        if old in layer.outputs:
            self._rename_blob(old, new)
        self.invalidate()

    def _rename_blob(self, old: str, new: str) -> None:
        if new in self._producer:
            return  # keep the old blob name rather than collide
        producer = self._producer.pop(old)
        self._producer[new] = producer
        layer = self.layer(producer)
        layer.outputs = [new if b == old else b for b in layer.outputs]
        for consumer, index in [(c, i) for _, c, (b, i) in self.graph.out_edges(producer, keys=True) if b == old]:
            self.graph.remove_edge(producer, consumer, key=(old, index))
            self.graph.add_edge(producer, consumer, key=(new, index))
            self.layer(consumer).inputs[index] = new
        if self._outputs is not None:
            self._outputs = [new if b == old else b for b in self._outputs]
        if old in self.loss_weights:
            self.loss_weights[new] = self.loss_weights.pop(old)
        self.module_outputs = {path: new if b == old else b for path, b in self.module_outputs.items()}

    def prune_to(self, keep: set[str]) -> list[str]:
        """Drop every layer not in ``keep``; returns the dropped names in order."""
        dropped = [name for name in self.layer_names() if name not in keep]
        for name in dropped:
            layer = self.layer(name)
            for blob in layer.outputs:
                del self._producer[blob]
            self.graph.remove_node(name)
        if self._outputs is not None:
            self._outputs = [b for b in self._outputs if b in self._producer]
        self.loss_weights = {b: w for b, w in self.loss_weights.items() if b in self._producer}
        self.invalidate()
        return dropped

    def invalidate(self) -> None:
        """Forget cached shapes and order (call after changing blobs or params in place)."""
        self._shapes = None
        self._names = None
        self._pending = []

    # ------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every change made inside the block if it raises.

        The snapshot copies the graph and the layer records but no tensor data (a blob
        whose values change gets a new tensor, never an in-place write), so it is cheap
        even for large nets.
        """
        saved = self._snapshot()
        try:
            yield
        except BaseException:
            self._restore(saved)
            raise

    def copy(self) -> Net:
        """An independent copy of the graph and layer records that shares the weight
        tensors (and opaque modules): cheap, and edits to the copy never reach this net."""
        memo: dict[int, object] = {}
        for layer in self.layers():
            for blob in layer.blobs.values():
                # values and the readers / computations that make them are shared, not copied
                for shared in (blob._data, blob._loader, blob._array_loader):
                    if shared is not None:
                        memo[id(shared)] = shared
            for value in layer.extra.values():
                if isinstance(value, torch.nn.Module):
                    memo[id(value)] = value
        return copy.deepcopy(self, memo)

    def skeleton(self) -> Net:
        """A copy of the structure alone: layers, wiring, hyper-parameters, and each blob's
        shape, multipliers and origin, without weight values or the loaders that would read
        them. Cheap for any size of net; for looking at a net as it was before edits."""
        twin = Net(self.name)
        for layer in self.layers():
            blobs = {
                role: dataclasses.replace(blob, _data=None, _loader=None, _array_loader=None)
                for role, blob in layer.blobs.items()
            }
            twin.add_layer(
                dataclasses.replace(
                    layer,
                    inputs=list(layer.inputs),
                    outputs=list(layer.outputs),
                    params=copy.deepcopy(layer.params),
                    blobs=blobs,
                    extra=dict(layer.extra),
                )
            )
        twin._outputs = list(self._outputs) if self._outputs is not None else None
        twin.info = self.info.copy()
        if self._shapes is not None:
            twin._shapes = dict(self._shapes)
        return twin

    @contextlib.contextmanager
    def temporarily(self) -> Iterator[None]:
        """Undo every change made inside the block when it ends (for probes: extra
        outputs for a parity check)."""
        saved = self._snapshot()
        try:
            yield
        finally:
            self._restore(saved)

    def _snapshot(self) -> tuple:
        layers = {}
        for name in self.graph.nodes:
            layer = self.graph.nodes[name]["layer"]
            fields = dict(vars(layer))
            fields.update(
                inputs=list(layer.inputs),
                outputs=list(layer.outputs),
                params=copy.deepcopy(layer.params),
                blobs={role: copy.copy(blob) for role, blob in layer.blobs.items()},
                extra=dict(layer.extra),
            )
            layers[name] = (layer, fields)
        return (
            self.graph.copy(),
            dict(self._producer),
            self._outputs and list(self._outputs),
            self.info.copy(),
            layers,
        )

    def _restore(self, saved: tuple) -> None:
        graph, producer, outputs, info, layers = saved
        for original, fields in layers.values():
            original.__dict__.update(fields)
        self.graph, self._producer, self._outputs, self.info = graph, producer, outputs, info
        self.invalidate()

    # ---------------------------------------------------------- shape inference
    def shapes(self) -> dict[str, Shape | None]:
        """Every blob's shape, inferred from the Input layers' shapes (cached).

        Raises:
            ShapeError: a layer's inputs do not fit it; the message names the layer.
        """
        self.ensure_shapes()
        assert self._shapes is not None  # ensure_shapes fills it or raises
        return dict(self._shapes)

    def ensure_shapes(self) -> None:
        """Infer (or finish inferring) every blob's shape; raises like :meth:`shapes`
        without copying the table."""
        if self._shapes is not None and not self._pending:
            return
        if self._shapes is None:
            shapes: dict[str, Shape | None] = {}
            todo = list(self.layers())
        else:  # only the layers added at the end since the last inference (an error leaves
            # them pending, so entries written before it are simply written again)
            shapes, todo = self._shapes, [self.layer(name) for name in self._pending]
        for layer in todo:
            kind = kind_of(layer.type)
            in_shapes = [shapes[b] for b in layer.inputs]
            try:
                out = _infer(kind, layer, in_shapes)
            except ShapeError as error:
                if error.subject is None:
                    error.subject = layer.name
                if not error.message.startswith(f"layer {layer.name!r}"):
                    error.message = f"layer {layer.name!r} ({layer.type}): {error.message}"
                raise
            if len(out) != len(layer.outputs):
                raise ShapeError(
                    f"layer {layer.name!r} ({layer.type}) makes {len(out)} outputs, has {len(layer.outputs)} tops"
                )
            _check_output_sizes(layer, out)
            shapes.update(zip(layer.outputs, out))
        self._shapes, self._pending = shapes, []

    def input_shapes(self, name: str) -> list[Shape | None]:
        """The shapes of layer ``name``'s inputs as its type sees them (a per-frame layer:
        without the time axis), inferred over its ancestors only (so a
        layer downstream that no longer fits, while an edit is under way, does not matter)."""
        target = self.layer(name)
        if self._shapes is not None and all(self._producer[b] not in self._pending for b in target.inputs):
            return _as_seen(target, [self._shapes[b] for b in target.inputs])
        keep = self.ancestors(name)
        shapes: dict[str, Shape | None] = {}
        for layer in self.layers():
            if layer.name in keep:
                out = _infer(kind_of(layer.type), layer, [shapes[b] for b in layer.inputs])
                shapes.update(zip(layer.outputs, out))
        return _as_seen(target, [shapes[b] for b in target.inputs])

    def shape(self, blob: str) -> Shape | None:
        return self.shapes()[blob]

    def known_shape(self, blob: str) -> Shape:
        """The shape of ``blob``, which must be known (a ShapeError naming it otherwise)."""
        shape = self.shapes()[blob]
        if shape is None:
            raise ShapeError(f"the shape of blob {blob!r} is unknown here", subject=blob)
        return shape


def _as_seen(layer: Layer, shapes: list[Shape | None]) -> list[Shape | None]:
    """Input shapes as the layer's type sees them: a per-frame layer sees one frame."""
    if not layer.per_frame:
        return shapes
    return [None if s is None else (s[0], *s[2:]) for s in shapes]


def _infer(kind, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
    """A layer's output shapes. A per-frame layer's type infers them for one frame; the
    time axis (axis 1 of its inputs) is put back into each."""
    if not layer.per_frame:
        return kind.infer_shapes(layer, in_shapes)
    steps = in_shapes[0][1] if in_shapes and in_shapes[0] is not None else None
    out = kind.infer_shapes(layer, _as_seen(layer, in_shapes))
    return [None if s is None else (s[0], cast(int, steps), *s[1:]) for s in out]


def _check_output_sizes(layer: Layer, shapes: list[Shape | None]) -> None:
    """An output that could never be allocated (a huge num_output or pad) is refused
    here, with its size, before anything runs."""
    for shape in shapes:
        if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
            check_bytes(
                f"layer {layer.name!r} ({layer.type}): its output {shape}", tensor_bytes(shape), subject=layer.name
            )
