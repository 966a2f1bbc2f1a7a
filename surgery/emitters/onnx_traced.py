"""ONNX for layers surgery does not model: an opaque module or call is exported on its
own with torch's ONNX exporter and its nodes are spliced into the graph.

The piece exported is the layer plus the non-tensor values it reads (``x.size(0)``,
``h * w``...), traced from the tensors they come from, so sizes stay symbolic and the
batch axis stays dynamic. Spliced names keep the layer's: the node writing the layer's
output is called exactly like the layer, the others ``<layer>/<their own name>``, and
their initializers ``<layer>/<name>``. Surgery never looks inside such a piece: an edit
that would have to is refused where it is checked, naming the layer.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any

import onnx
from onnx import helper, numpy_helper

from surgery.errors import unsupported_in_onnx
from surgery.ir import Layer
from surgery.layers import layer_type
from surgery.layers.meta_run import NonTensor
from surgery.lazy_torch import fx, nn, torch

#: The newest opset torch's (TorchScript) ONNX exporter writes.
MAX_TRACED_OPSET = 20


def _piece(writer: Any, layer: Layer) -> list[Layer]:
    """``layer`` and the layers making the non-tensor values it reads, in graph order."""
    net, shapes = writer.net, writer.shapes
    found: dict[str, Layer] = {}
    stack = [layer]
    while stack:
        for blob in stack.pop().inputs:
            if isinstance(shapes[blob], NonTensor):
                producer = net.producer(blob)
                if producer.name not in found:
                    found[producer.name] = producer
                    stack.append(producer)
    return [item for item in net.layers() if item.name in found] + [layer]


def _module_for(writer: Any, layer: Layer) -> nn.Module:
    """A copy of the source module holding the layer's blobs (the module itself may sit on
    the meta device, its weights read lazily)."""
    owner = writer.net.layer(layer.extra.get("module_path", layer.name))
    module = copy.deepcopy(layer.extra["module"])  # the same module as the owner's (which may be typed)
    for role, blob in owner.blobs.items():
        path, _, leaf = role.rpartition(".")
        holder = module.get_submodule(path)
        if leaf in holder._parameters:
            # requires_grad keeps torch's inference fast paths (fused attention) out of the trace
            holder._parameters[leaf] = nn.Parameter(blob.data, requires_grad=True)
        else:
            holder._buffers[leaf] = blob.data
    return module


def _add_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        if part not in owner._modules:
            owner.add_module(part, nn.Module())
        owner = owner.get_submodule(part)
    owner.add_module(leaf, module)


def _example(shape: Any) -> torch.Tensor:
    dtype = getattr(shape, "dtype", torch.float32)
    if dtype.is_floating_point:
        return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(tuple(shape), dtype=dtype)


def _trace_module(writer: Any, layers: list[Layer]) -> tuple[fx.GraphModule, list[str]]:
    """A GraphModule computing the piece, and the tensor blobs it reads (its inputs)."""
    graph, root = fx.Graph(), nn.Module()
    env: dict[str, fx.Node] = {}
    inputs: list[str] = []
    made = {blob for item in layers for blob in item.outputs}
    for item in layers:
        for blob in item.inputs:
            if blob not in made and blob not in env:
                env[blob] = graph.placeholder(f"input_{len(inputs)}")
                inputs.append(blob)
    for item in layers:
        if item.type == "Opaque":
            path = item.extra.get("module_path", item.name)
            try:
                root.get_submodule(path)
            except AttributeError:
                _add_submodule(root, path, _module_for(writer, item))
        kind = layer_type(item.type)
        node = kind.emit_fx(item, graph, [env[b] for b in item.inputs], [writer.shapes[b] for b in item.inputs])
        env[item.outputs[0]] = node
    graph.output(env[layers[-1].outputs[0]])
    return fx.GraphModule(root, graph), inputs


def _export(module: nn.Module, examples: list[torch.Tensor], dynamic: list[bool], opset: int) -> onnx.GraphProto:
    """The piece as an ONNX graph with inputs ``in0``, ``in1``... and output ``out``."""
    buffer = io.BytesIO()
    names = [f"in{i}" for i in range(len(examples))]
    axes = {name: {0: "batch"} for name, batched in zip(names, dynamic) if batched}
    if axes:
        axes["out"] = {0: "batch"}
    notes = io.StringIO()  # the exporter prints its graph when it fails: the error says enough
    with warnings.catch_warnings(), contextlib.redirect_stdout(notes), contextlib.redirect_stderr(notes):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            tuple(examples),
            buffer,  # type: ignore[arg-type]  # torch's annotation omits the file objects it accepts
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["out"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue()).graph


def _signature(writer: Any, layers: list[Layer], inputs: list[str], dynamic: list[bool]) -> tuple | None:
    """What the exported graph depends on, for a piece of calls only (no module weights
    baked in): equal signatures export equal graphs, so the export is done once."""
    if any(item.type != "OpaqueCall" for item in layers):
        return None
    position = {blob: index for index, blob in enumerate(inputs)}
    for index, item in enumerate(layers):
        position[item.outputs[0]] = len(inputs) + index
    calls = tuple(
        (
            item.extra["kind"],
            item.extra["target"],
            repr(item.extra["args"]),
            repr(item.extra["kwargs"]),
            tuple(position[b] for b in item.inputs),
        )
        for item in layers
    )
    shapes = tuple((tuple(writer.shapes[b]), str(getattr(writer.shapes[b], "dtype", ""))) for b in inputs)
    return calls, shapes, tuple(dynamic), writer.opset


def write_traced(writer: Any, layer: Layer) -> None:
    """Write ``layer`` (an opaque module or call) into ``writer`` through torch's exporter.

    A layer whose output is not a tensor writes nothing: the pieces that read it
    compute it themselves."""
    if isinstance(writer.shapes[layer.outputs[0]], NonTensor):
        return
    if writer.opset > MAX_TRACED_OPSET:
        raise unsupported_in_onnx(layer, f"torch's exporter writes opsets up to {MAX_TRACED_OPSET}, not {writer.opset}")
    layers = _piece(writer, layer)
    module, inputs = _trace_module(writer, layers)
    batched = writer.batched()
    dynamic = [blob in batched for blob in inputs]
    key = _signature(writer, layers, inputs, dynamic)
    graph = writer.traced_graphs.get(key) if key is not None else None
    if graph is None:
        try:
            graph = _export(module, [_example(writer.shapes[b]) for b in inputs], dynamic, writer.opset)
        except Exception as error:  # noqa: BLE001  (the exporter raises many types; say which layer)
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise unsupported_in_onnx(
                layer, f"torch's exporter fails on it: {type(error).__name__}: {message}"
            ) from None
        if key is not None:
            writer.traced_graphs[key] = graph
    _splice(writer, layer, graph, inputs)


def _splice(writer: Any, layer: Layer, graph: onnx.GraphProto, inputs: list[str]) -> None:
    output = layer.outputs[0]
    outer = {f"in{i}": blob for i, blob in enumerate(inputs)}
    result = graph.output[0].name
    prefix = f"{layer.name}/"

    def rename(name: str) -> str:
        if not name:
            return name
        if name == result and name not in outer:
            return output
        return outer.get(name, prefix + name)

    for tensor in graph.initializer:
        writer.const(rename(tensor.name), numpy_helper.to_array(tensor))
    for index, node in enumerate(graph.node):
        outputs = [rename(name) for name in node.output]
        name = layer.name if output in outputs else rename(node.name or f"{node.op_type}_{index}")
        copied = helper.make_node(
            node.op_type, [rename(n) for n in node.input], outputs, name=name, domain=node.domain or None
        )
        copied.attribute.extend(_renamed_attributes(node.attribute, rename))
        writer.nodes.append(copied)
    if result in outer:  # the piece is the identity at inference (stochastic depth, dropout)
        writer.node("Identity", [outer[result]], [output], layer.name)


def _renamed_attributes(attributes: Any, rename: Any) -> list[onnx.AttributeProto]:
    """``attributes`` with every name inside their subgraphs (a Loop's or an If's body)
    renamed as the outer graph is: a body reads the outer graph's values by name."""
    renamed = []
    for attribute in attributes:
        copy = onnx.AttributeProto()
        copy.CopyFrom(attribute)
        for graph in [copy.g] if copy.type == onnx.AttributeProto.GRAPH else list(copy.graphs):
            _rename_graph(graph, rename)
        renamed.append(copy)
    return renamed


def _rename_graph(graph: onnx.GraphProto, rename: Any) -> None:
    """Rename, in place, every value of a subgraph (its own values too, so that none can
    clash with a name of the graph it is spliced into)."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = rename(value.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        if node.name:
            node.name = rename(node.name)
        for attribute in node.attribute:
            for inner in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                _rename_graph(inner, rename)
