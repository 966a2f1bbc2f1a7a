"""The torch importer's reader: a torch-level fx graph (module calls, torch functions,
tensor methods; traced by torch.fx or rebuilt from torch.export) becomes a :class:`Net`.

Known module and function types become typed layers through the layer registry;
anything else stays an opaque layer that carries its module (or its call) and still
emits to torch. Layer names are the module paths (``features.0``, ``aux1.fc2``).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, cast

from surgery.errors import ModelFormatError, ShapeError
from surgery.importers.batch_probe import BatchProbe, foldable, same_value
from surgery.importers.torch_modules import record_module_outputs
from surgery.importers.torch_trace import (
    bind_defaults,
    count_leaves,
    get_attr_value,
    is_output_tuple,
    map_structure,
    nones_unread,
    only_indexed,
    output_leaves,
    tensor_leaves,
)
from surgery.ir import Layer, Net, ParamBlob
from surgery.layers import layer_type, torch_function_map, torch_functional_map, torch_module_map
from surgery.layers.meta_run import NonTensor, TracedShapes
from surgery.layers.opaque_call import TRAINING, InputRef, TrainOnly
from surgery.lazy_torch import fx, nn, torch


class GraphImporter:
    """Reads one model's graphs (train and eval mode) into a net; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        input_shapes: list[tuple[int, ...]],
        state_dict: Mapping[str, torch.Tensor] | None,
        name: str,
    ) -> None:
        self.model = model
        self.input_shapes = input_shapes
        self.state_dict = state_dict
        self.net = Net(name)
        self.blob_of: dict[fx.Node, str] = {}
        self.shapes: dict[str, Any] = {}  # blob -> shape (the value itself for a non-tensor)
        self.module_layers: dict[str, str] = {}  # module path -> first layer that calls it
        self.tuples: dict[fx.Node, tuple] = {}  # a module's tuple result, as blob names
        self.versions: dict[fx.Node, list[tuple[fx.Node, str]]] = {}  # a tensor changed in place: (by, blob)...
        self.constants: dict[fx.Node, Any] = {}  # sizes computed at import, read as literals
        self.probe = BatchProbe(self.net)
        self.modules = torch_module_map()
        self.functions = torch_function_map()
        self.functionals = torch_functional_map()

    # ------------------------------------------------------------------ blobs
    def _blob(self, key: str, tensor: torch.Tensor, trainable: bool) -> ParamBlob:
        if self.state_dict is None or tensor.device.type != "meta":
            return ParamBlob.from_tensor(tensor, trainable=trainable)
        if key not in self.state_dict:
            raise ModelFormatError(
                f"the weights file has no entry {key!r}", fix="pass the state_dict saved from this model"
            )
        stored = self.state_dict[key]
        if tuple(stored.shape) != tuple(tensor.shape):
            raise ModelFormatError(
                f"weights entry {key!r} has shape {tuple(stored.shape)}, the model expects {tuple(tensor.shape)}"
            )
        state = self.state_dict
        return ParamBlob.lazy(tuple(stored.shape), stored.dtype, lambda: state[key], trainable=trainable)

    def _module_blobs(self, path: str, module: nn.Module, recurse: bool) -> dict[str, ParamBlob]:
        blobs = {}
        for role, param in module.named_parameters(recurse=recurse):
            blobs[role] = self._blob(f"{path}.{role}", param, trainable=True)
        for role, buffer in module.named_buffers(recurse=recurse):
            if buffer is not None:
                blobs[role] = self._blob(f"{path}.{role}", buffer, trainable=False)
        return blobs

    # ------------------------------------------------------------------ nodes
    def _unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.net or self.net.has_blob(candidate):
            candidate, k = f"{name}@{k}", k + 1
        return candidate

    def _node_name(self, node: fx.Node) -> str:
        """The layer name for a traced call or input (the exported importer names calls
        after the module they ran in)."""
        return node.name

    def _add(self, node: fx.Node, layer: Layer) -> None:
        if node not in self.tuples:
            layer.outputs = [layer.name]
            self.blob_of[node] = layer.name
        self.shapes.update(zip(layer.outputs, self._infer(layer)))
        self.net.add_layer(layer)

    def _tuple_outputs(self, layer: Layer, structure: Any) -> None:
        """One top per tensor of a tuple result (the first one named after the layer)."""
        if structure is not None:
            layer.outputs = [layer.name] + [
                self._unique(f"{layer.name}:{i}") for i in range(1, count_leaves(structure))
            ]

    def _infer(self, layer: Layer) -> list[Any]:
        """The layer's output shapes, from its inputs' (raises ShapeError naming it)."""
        try:
            return layer_type(layer.type).infer_shapes(layer, [self.shapes[b] for b in layer.inputs])
        except ShapeError as error:
            if not error.message.startswith(f"layer {layer.name!r}"):
                error.message = f"layer {layer.name!r} ({layer.type}): {error.message}"
            raise

    def _fits(self, layer: Layer) -> bool:
        """Whether a typed reading of a call takes its inputs (else it stays an opaque call)."""
        try:
            self._infer(layer)
        except ShapeError:
            return False
        return True

    def placeholder(self, node: fx.Node, index: int) -> None:
        if index >= len(self.input_shapes) and node.args:
            return  # an optional input left at its default: _bind_defaults put the value in its uses
        if index >= len(self.input_shapes):
            raise ModelFormatError(
                f"the model takes an input {node.target!r} but only {len(self.input_shapes)} input shape(s) were given"
            )
        shape = tuple(self.input_shapes[index])
        self._add(node, Layer(self._unique(self._node_name(node)), "Input", params={"shape": shape}))

    def get_attr(self, node: fx.Node) -> None:
        target = cast(str, node.target)  # get_attr nodes name an attribute path
        tensor = get_attr_value(self.model, target)
        blob = self._blob(target, tensor, trainable=isinstance(tensor, nn.Parameter))
        self._add(node, Layer(self._unique(target), "Constant", blobs={"value": blob}))

    def call_module(self, node: fx.Node) -> None:
        path = cast(str, node.target)  # call_module nodes name a module path
        module = self.model.get_submodule(path)
        if type(module) is nn.Identity and len(node.args) == 1 and not node.kwargs:
            self.blob_of[node] = self.blob_of[cast(fx.Node, node.args[0])]  # a placeholder (a removed fc): no layer
            return
        inputs = [self.blob_of[n] for n in tensor_leaves((node.args, node.kwargs))]
        kind = self.modules.get(type(module))
        layer = self._typed_module_call(node, module, kind, inputs) if kind is not None else None
        first = self.module_layers.get(path)
        if layer is None:
            layer = Layer(self._unique(path), "Opaque", inputs=inputs, extra={"module": module})
            refs: Any = lambda n: InputRef(inputs.index(self.blob_of[n]))  # noqa: E731
            if node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
                # keyword arguments, literals or nested tensors: the call as it was made
                layer.extra["args"] = fx.node.map_arg(node.args, refs)
            if node.kwargs:
                layer.extra["kwargs"] = fx.node.map_arg(node.kwargs, refs)
        structure = kind.torch_output_structure(layer) if kind is not None and layer.type != "Opaque" else None
        if structure is not None:  # the module returns a tuple (nn.LSTM's (y, (h, c))): one top per tensor
            self._tuple_outputs(layer, structure)
            self.tuples[node] = map_structure(structure, layer.outputs)
        if first is None:
            self.module_layers[path] = layer.name
            nested = layer.type == "Opaque" or (kind is not None and kind.torch_nested_blobs)
            layer.blobs = self._module_blobs(path, module, recurse=nested)
        else:
            layer.extra["module_path"] = first  # a module called again: share it, weights and all
        self._add(node, layer)

    def _typed_module_call(self, node: fx.Node, module: nn.Module, kind: Any, inputs: list[str]) -> Layer | None:
        """The module call as a layer of ``kind``, or None when it stays an opaque module.
        A call with several arguments (``attention(x, x, x, need_weights=False)``) is typed
        only when the layer takes its tensors, and its result's None items are never read."""
        args = tuple(fx.node.map_arg(node.args, lambda n: None))
        params = kind.import_torch_module_call(module, args, dict(fx.node.map_arg(node.kwargs, lambda n: None)))
        if params is None:
            return None
        plain = len(node.args) == 1 and not node.kwargs
        path = cast(str, node.target)
        layer = Layer(self._unique(path), kind.name, inputs=inputs[:1] if plain else inputs, params=params)
        structure = kind.torch_output_structure(layer)
        if not plain and (not self._fits(layer) or (structure is not None and not nones_unread(node, structure))):
            return None
        return layer

    def call_function(self, node: fx.Node) -> None:
        target = node.target
        if target is operator.getitem and node.args[0] in self.tuples and isinstance(node.args[1], int):
            item = self.tuples[cast(fx.Node, node.args[0])][node.args[1]]  # (y, (h, c))[1] is still a tuple
            if item is not None:  # an item that is always None, never read (nones_unread)
                (self.tuples if isinstance(item, tuple) else self.blob_of)[node] = item
            return
        self._read_constants(node)
        tensor_args = [n for n in tensor_leaves((node.args, node.kwargs))]
        # Sizes that follow the batch (the others were folded): their "shape" is the value.
        sizes = [n for n in tensor_args if isinstance(self.shapes[self.blob_of[n]], NonTensor)]
        inputs: list[str] = []
        for n in tensor_args:
            if self.blob_of[n] not in inputs:
                inputs.append(self.blob_of[n])
        if not sizes and self._functional_on_module(node, tensor_args):
            return
        typed, structure, opaque = self._typed_call(node, tensor_args, inputs, sizes)
        if typed is not None:
            if structure is not None:  # x.chunk(2): one top per part, read by getitem
                self.tuples[node] = map_structure(structure, typed.outputs)
            self._add(node, typed)
        else:
            opaque = opaque or self._opaque_call(node, inputs)
            self._add(node, opaque)
            self._fold(node, opaque)
        self._follow_in_place(node)

    def _follow_in_place(self, node: fx.Node) -> None:
        """After ``noise.div_(p)`` or ``F.relu(x, inplace=True)`` the source's later reads of
        the mutated tensor see the new values: in the net they read the call's output."""
        first = node.args[0] if node.args else None
        in_place = (
            node.op == "call_method"
            and isinstance(node.target, str)
            and node.target.endswith("_")
            and not node.target.endswith("__")
        ) or node.kwargs.get("inplace") is True
        if in_place and isinstance(first, fx.Node) and first in self.blob_of and node in self.blob_of:
            self.versions.setdefault(first, [(first, self.blob_of[first])]).append((node, self.blob_of[node]))
            self.blob_of[first] = self.blob_of[node]

    def _blob_after(self, node: fx.Node, last: fx.Node) -> str | None:
        """``node``'s blob as it stood once ``last`` had run (a module's output, read when
        the module returns, before a later in-place call changes it)."""
        versions = self.versions.get(node)
        if versions is None:
            return self.blob_of.get(node)
        seen = [blob for maker, blob in versions if self.position[maker] <= self.position[last]]
        return seen[-1] if seen else None

    def _typed_call(
        self, node: fx.Node, tensor_args: list[fx.Node], inputs: list[str], sizes: list[fx.Node]
    ) -> tuple[Layer | None, Any, Layer | None]:
        """The call as a typed layer (or None) with its output structure (None: one tensor),
        and the opaque reading of it when one was built to trace its shapes. A call reading
        sizes that follow the batch is typed only by a kind that reads its parameters off
        the traced shapes at two batch sizes."""
        args = tuple(fx.node.map_arg(node.args, lambda n: None))  # None where a tensor or size stands
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: None))
        tensors = [n for n in tensor_args if n not in sizes]
        opaque = traced = None
        for kind in self.functions.get(node.target, []):
            structure = None
            if kind.reads_traced_shapes:
                if opaque is None:
                    opaque = self._opaque_call(node, inputs)
                    traced = self._traced(opaque, [self.blob_of[n] for n in tensors])
                params = kind.import_torch_call_traced(node.target, args, kwargs, traced) if traced else None
            elif not sizes:
                call_args, call_kwargs = self._flagged(node) if kind.reads_mode_flags else (args, kwargs)
                params, structure = kind.import_torch_call_shaped(
                    node.target, call_args, call_kwargs, [self.shapes[self.blob_of[n]] for n in tensors]
                )
                if structure is not None and not only_indexed(node):
                    continue
            else:
                continue
            if params is None:
                continue
            name = self._unique(self._node_name(node))
            layer = Layer(name, kind.name, inputs=[self.blob_of[n] for n in tensors], outputs=[name], params=params)
            self._tuple_outputs(layer, structure)
            if (traced is not None and self._gives(layer, traced)) if kind.reads_traced_shapes else self._fits(layer):
                return layer, structure, opaque
        return None, None, opaque

    def _flagged(self, node: fx.Node) -> tuple[tuple, dict]:
        """The call's arguments with :data:`TRAINING` where the model passed its own
        ``self.training``, None where a tensor stands."""
        args, kwargs = self._mode_flags(node)
        return tuple(fx.node.map_arg(args, lambda n: None)), dict(fx.node.map_arg(kwargs, lambda n: None))

    def _traced(self, opaque: Layer, tensors: list[str]) -> TracedShapes | None:
        """The call's tensor input and output shapes at both batch sizes (None when the net
        does not run at the second one)."""
        here, there = self._infer(opaque)[0], self.probe.infer(opaque)[0]
        alternate_inputs = tuple(self.probe.shape(b) for b in tensors)
        if there is None or None in alternate_inputs:
            return None
        return TracedShapes(tuple(self.shapes[b] for b in tensors), here, alternate_inputs, there)

    def _gives(self, layer: Layer, traced: TracedShapes) -> bool:
        """Whether ``layer`` outputs the traced shape at both batch sizes."""
        try:
            here = self._infer(layer)[0]
        except ShapeError:
            return False
        return here == traced.output and self.probe.infer(layer)[0] == traced.alternate_output

    def _opaque_call(self, node: fx.Node, inputs: list[str]) -> Layer:
        refs: Any = lambda n: InputRef(inputs.index(self.blob_of[n]))  # noqa: E731
        args, kwargs = self._mode_flags(node)
        name = self._unique(self._node_name(node))
        return Layer(
            name,
            "OpaqueCall",
            inputs=inputs,
            outputs=[name],
            extra={
                "kind": node.op,
                "target": node.target,
                "args": fx.node.map_arg(args, refs),
                "kwargs": dict(fx.node.map_arg(kwargs, refs)),
            },
        )

    # --------------------------------------------------- sizes computed at import
    def _read_constants(self, node: fx.Node) -> None:
        """Put the values of folded sizes into the call's arguments, as literals."""
        if any(n in self.constants for n in tensor_leaves((node.args, node.kwargs))):
            node.args = fx.node.map_arg(node.args, lambda n: self.constants.get(n, n))
            node.kwargs = fx.node.map_arg(node.kwargs, lambda n: self.constants.get(n, n))

    def _fold(self, node: fx.Node, layer: Layer) -> None:
        """Compute a size at import: a non-tensor result that is the same at two batch
        sizes (``h // p``, ``c == 768``, ``torch._assert(True)``) is a constant of the model,
        not a layer. Sizes that follow the batch stay layers."""
        value = self.shapes[layer.outputs[0]]
        if len(layer.outputs) != 1 or not isinstance(value, NonTensor) or not foldable(value.value):
            return
        if any(user.op not in ("call_function", "call_method") for user in node.users):
            return  # read by a module call or returned: it stays a value the graph carries
        if layer.inputs and not same_value(value, self.probe.shape(layer.outputs[0])):
            return
        self.net.remove_layer(layer.name)
        del self.blob_of[node], self.shapes[layer.outputs[0]]
        self.probe.shapes.pop(layer.outputs[0], None)
        self.constants[node] = value.value

    def _drop_contiguous_before_reshape(self) -> None:
        """``x.transpose(1, 2).contiguous().view(...)`` (channel shuffle, window partition):
        the typed Reshape copies a strided input itself, with the same values, so the
        ``contiguous`` call goes."""
        outputs = set(self.net.outputs)
        for layer in list(self.net.layers()):
            extra = layer.extra
            if (
                layer.type != "OpaqueCall"
                or extra["target"] != "contiguous"
                or extra["kind"] != "call_method"
                or len(extra["args"]) != 1
                or extra["kwargs"]
                or layer.outputs[0] in outputs
            ):
                continue
            readers = self.net.consumers(layer.outputs[0])
            if readers and all(reader.type == "Reshape" for reader, _ in readers):
                self.net.redirect_consumers(layer.outputs[0], layer.inputs[0])
                self.net.remove_layer(layer.name)

    def _drop_unused_sizes(self) -> None:
        """Remove size layers nothing reads any more (their readers took the values)."""
        outputs = set(self.net.outputs)
        for layer in reversed(list(self.net.layers())):
            if all(
                isinstance(self.shapes.get(b), NonTensor) and b not in outputs and not self.net.consumers(b)
                for b in layer.outputs
            ):
                self.net.remove_layer(layer.name)

    def _weights_owner(self, node: fx.Node, tensor_args: list[fx.Node]) -> str | None:
        """The module whose own parameters/buffers are every tensor argument after the
        first (``F.linear(x, self.weight, self.bias)``), else None."""
        weights = tensor_args[1:]
        if not weights or any(n.op != "get_attr" for n in weights):
            return None
        owners = {cast(str, n.target).rpartition(".")[0] for n in weights}
        return owners.pop() if len(owners) == 1 else None

    def _functional_on_module(self, node: fx.Node, tensor_args: list[fx.Node]) -> bool:
        """A functional call on one module's own weights becomes that module's layer,
        named after it (a classifier edit can then name it). True when it did."""
        kinds = self.functionals.get(node.target, [])
        path = self._weights_owner(node, tensor_args) if kinds else None
        if path is None or not tensor_args or tensor_args[0].op == "get_attr" or path in self.module_layers:
            return False
        module = self.model.get_submodule(path)
        args = tuple(fx.node.map_arg(node.args, lambda n: None))
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: None))
        for kind in kinds:
            params = kind.import_torch_functional(node.target, args, kwargs, module)
            if params is None:
                continue
            layer = Layer(
                self._unique(path),
                kind.name,
                inputs=[self.blob_of[tensor_args[0]]],
                params=params,
                blobs=self._module_blobs(path, module, recurse=False),
            )
            if not self._fits(layer):
                continue
            for weight in tensor_args[1:]:  # the Constant layers the weights were read into
                if set(weight.users) == {node} and self.blob_of[weight] in self.net:
                    self.net.remove_layer(self.blob_of[weight])
            self.module_layers[path] = layer.name
            self._add(node, layer)
            return True
        return False

    def _mode_flags(self, node: fx.Node) -> tuple[Any, Any]:
        """The call's arguments with :data:`TRAINING` where the model passed its own
        ``self.training`` (True in the train trace, False in the eval one) and
        :class:`TrainOnly` where it passed a number only while training (a rate in the
        train trace, 0 in the eval one), so the emitted call follows the emitted model's
        mode (stochastic depth, functional dropout, attention dropout)."""
        twin = self.eval_twins.get(node.name)
        if (
            twin is None
            or twin.target != node.target
            or len(twin.args) != len(node.args)
            or set(twin.kwargs) != set(node.kwargs)
        ):
            return node.args, node.kwargs

        def flag(train: Any, evaluated: Any) -> Any:
            if train is True and evaluated is False:
                return TRAINING
            if type(train) in (int, float) and type(evaluated) is type(train) and train != 0 and evaluated == 0:
                return TrainOnly(train)  # `p if self.training else 0`: a dropout rate
            return train

        args = tuple(flag(a, b) for a, b in zip(node.args, twin.args))
        return args, {key: flag(value, twin.kwargs[key]) for key, value in node.kwargs.items()}

    # ------------------------------------------------------------------- run
    def run(self, train_graph: fx.Graph, eval_graph: fx.Graph) -> Net:
        """The net of the model's two graphs (the same graph twice where only one mode was
        captured)."""
        for graph in (train_graph, eval_graph):
            bind_defaults(graph, len(self.input_shapes))
        self.eval_twins = {n.name: n for n in eval_graph.nodes}
        index = 0
        for node in train_graph.nodes:
            if is_output_tuple(node):
                continue
            if node.op == "placeholder":
                self.placeholder(node, index)
                index += 1
            elif node.op == "get_attr":
                self.get_attr(node)
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
        outputs = [self.blob_of[n] for n in output_leaves(train_graph)]
        self.net.set_outputs(dict.fromkeys(outputs))
        self._drop_unused_sizes()
        self._drop_contiguous_before_reshape()
        self._mark_train_only(train_graph, eval_graph)
        self.position = {node: index for index, node in enumerate(train_graph.nodes)}
        record_module_outputs(
            train_graph,
            self.net,
            self._blob_after,
            self.tuples,
            lambda blob: not isinstance(self.shapes.get(blob), NonTensor),
        )
        return self.net

    def _mark_train_only(self, train_graph: fx.Graph, eval_graph: fx.Graph) -> None:
        """Layers only the train-mode outputs need get phase "train"."""
        train_names = {n.name: n for n in train_graph.nodes}
        deploy = []
        for leaf in output_leaves(eval_graph):
            twin = train_names.get(leaf.name)
            if twin is None or twin not in self.blob_of or (leaf.op, leaf.target) != (twin.op, twin.target):
                return  # the two traces differ in a way we cannot match: every layer runs in both
            deploy.append(self.net.producer(self.blob_of[twin]).name)
        needed: set[str] = set()
        for name in deploy:
            needed |= self.net.ancestors(name) | {name}
        for layer in self.net.layers():
            if layer.name not in needed:
                layer.phase = "train"


__all__ = ["GraphImporter"]
