"""Torch importer for models torch.fx cannot trace (Hugging Face transformers: Python
control flow on sizes, iteration over tensors, ``ModelOutput`` results).

torch.export runs the model's Python code once on fake tensors (no data, no compute)
with a symbolic batch, and records the ATen operations it made, each tagged with the
module it ran in (``nn_module_stack``). This module turns that graph back into the
torch-level graph the fx importer reads:

- an operation that is the whole call of a module surgery knows (``nn.Linear``,
  ``nn.Conv2d``, ``nn.LayerNorm``, ``nn.Dropout``...) becomes that module's call, so the
  layer is typed and named by its module path (``vit.layers.5.attention.q_proj``);
- other operations become the torch functions and methods they are (``aten.gelu`` is
  ``F.gelu``, ``aten.view`` is ``Tensor.view``, ``aten.select`` is indexing), typed by
  the registry where it knows them and kept as calls where it does not, and named after
  the module they ran in (``vit.layers.5.attention.view@2``);
- a mask computed from sizes alone that keeps everything (transformers' all-True
  attention mask) is dropped, so attention is attention;
- of a dict or ``ModelOutput`` result, one entry is the net's output (``logits`` unless
  the source names another).

The model is exported in eval mode only: modules follow the emitted model's mode
(``nn.Dropout`` trains as dropout), but a rate the model's code picks from
``self.training`` inside a function call (attention dropout) is the eval one, 0.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from surgery.errors import ModelFormatError
from surgery.importers.torch_graph import GraphImporter
from surgery.importers.torch_trace import get_attr_value, tensor_leaves
from surgery.ir import Layer, Net
from surgery.layers import torch_module_map
from surgery.lazy_torch import fx, nn, torch

#: a slice end at or past this is "to the end" (torch writes sys.maxsize)
_TO_THE_END = 2**62

#: ATen operations with no value of their own: checks, and copies to the same type
_CHECKS = ("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async")
_SAME_VALUE = ("clone", "alias", "lift_fresh_copy", "detach", "to", "_to_copy", "contiguous")

Call = tuple[str, Any, tuple, dict]  # (fx op, target, args, kwargs)


def _aten(name: str) -> Any:
    return getattr(torch.ops.aten, name)


def _function(target: Any) -> Callable[..., Call]:
    return lambda *args, **kwargs: ("call_function", target, args, kwargs)


def _method(name: str) -> Callable[..., Call]:
    return lambda *args, **kwargs: ("call_method", name, args, kwargs)


def _binary(target: Any, with_alpha: Any = None) -> Callable[..., Call]:
    """``a <op> b``; with an ``alpha`` other than 1 (``torch.add(a, b, alpha=2)``), the
    torch function ``with_alpha`` that takes it."""

    def build(a: Any, b: Any, alpha: Any = 1) -> Call:
        if alpha != 1:
            return ("call_function", with_alpha, (a, b), {"alpha": alpha})
        return ("call_function", target, (a, b), {})

    return build


def _index(dim: int, item: Any) -> tuple:
    """``x[..., item]`` at axis ``dim`` as a getitem index."""
    if dim >= 0:
        return (slice(None),) * dim + (item,)
    return (Ellipsis, item) + (slice(None),) * (-dim - 1)


def _slice(x: Any, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Call | None:
    start = None if start == 0 else start
    end = None if isinstance(end, int) and end >= _TO_THE_END else end
    step_or_none = None if step == 1 else step
    if start is None and end is None and step_or_none is None:
        return None  # the whole axis: the value itself
    return ("call_function", operator.getitem, (x, _index(dim, slice(start, end, step_or_none))), {})


def _layer_norm(x: Any, shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, *_: Any) -> Call:
    return ("call_function", nn.functional.layer_norm, (x, shape, weight, bias, eps), {})


def _batch_norm(
    x: Any, w: Any, b: Any, mean: Any, var: Any, training: bool, momentum: float, eps: float, *_: Any
) -> Call:
    return ("call_function", nn.functional.batch_norm, (x, mean, var, w, b, training, momentum, eps), {})


def _gelu(x: Any, approximate: str = "none") -> Call:
    return ("call_function", nn.functional.gelu, (x,), {} if approximate == "none" else {"approximate": approximate})


def _softmax(x: Any, dim: int, half_to_float: Any = None) -> Call:
    return ("call_function", nn.functional.softmax, (x, dim), {})


def _attention(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Any = None,
    enable_gqa: bool = False,
) -> Call:
    kwargs: dict[str, Any] = {}
    if attn_mask is not None:
        kwargs["attn_mask"] = attn_mask
    if dropout_p:
        kwargs["dropout_p"] = dropout_p
    if is_causal:
        kwargs["is_causal"] = True
    if scale is not None:
        kwargs["scale"] = scale
    if enable_gqa:
        kwargs["enable_gqa"] = True
    return ("call_function", nn.functional.scaled_dot_product_attention, (q, k, v), kwargs)


def _translations() -> dict[Any, Callable[..., Call | None]]:
    """ATen overload -> the torch-level call it is (the fx importer's vocabulary)."""
    F = nn.functional
    table: dict[str, Callable[..., Call | None]] = {
        "linear.default": _function(F.linear),
        "conv1d.default": _function(torch.conv1d),
        "conv2d.default": _function(torch.conv2d),
        "conv3d.default": _function(torch.conv3d),
        "layer_norm.default": _layer_norm,
        "batch_norm.default": _batch_norm,
        "gelu.default": _gelu,
        "relu.default": _function(torch.relu),
        "relu_.default": _function(torch.relu),
        "sigmoid.default": _function(torch.sigmoid),
        "tanh.default": _function(torch.tanh),
        "silu.default": _function(F.silu),
        "silu_.default": _function(F.silu),
        "hardtanh.default": _function(F.hardtanh),
        "hardtanh_.default": _function(F.hardtanh),
        "hardswish.default": _function(F.hardswish),
        "hardswish_.default": _function(F.hardswish),
        "hardsigmoid.default": _function(F.hardsigmoid),
        "add.Tensor": _binary(operator.add, torch.add),
        "add_.Tensor": _binary(operator.add, torch.add),
        "sub.Tensor": _binary(operator.sub, torch.sub),
        "mul.Tensor": _binary(operator.mul),
        "mul_.Tensor": _binary(operator.mul),
        "div.Tensor": _binary(operator.truediv),
        "matmul.default": _function(torch.matmul),
        "bmm.default": _function(torch.bmm),
        "softmax.int": _softmax,
        "scaled_dot_product_attention.default": _attention,
        "view.default": _method("view"),
        "reshape.default": _method("reshape"),
        "permute.default": _method("permute"),
        "transpose.int": _method("transpose"),
        "unsqueeze.default": _method("unsqueeze"),
        "squeeze.dim": _method("squeeze"),
        "expand.default": _method("expand"),
        "flatten.using_ints": _function(torch.flatten),
        "cat.default": _function(torch.cat),
        "mean.dim": _method("mean"),
        "adaptive_avg_pool2d.default": _function(F.adaptive_avg_pool2d),
        "max_pool2d.default": _function(F.max_pool2d),
        "avg_pool2d.default": _function(F.avg_pool2d),
        "dropout.default": _function(F.dropout),
        "dropout_.default": _function(F.dropout),
        "pad.default": _function(F.pad),
        "sym_size.int": _method("size"),
        "select.int": lambda x, dim, i: ("call_function", operator.getitem, (x, _index(dim, i)), {}),
        "slice.Tensor": _slice,
    }
    found = {}
    for key, build in table.items():
        name, _, overload = key.partition(".")
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and hasattr(packet, overload):
            found[getattr(packet, overload)] = build
    return found


def _short(target: Any) -> str:
    """``aten.view.default`` -> ``view``; ``operator.mul`` -> ``mul``."""
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0].rstrip("_") or "call"


def _innermost(node: fx.Node) -> tuple[str, str] | None:
    """(call key, module path) of the module ``node`` ran in, innermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key = next(reversed(stack))
    path = stack[key][0]
    # torch.export tags nodes made outside every module (the input's sizes) with a hook's name
    return key, "" if path.startswith("_empty_nn_module_stack") else path


class _Translator:
    """Builds the torch-level graph of an exported program's unlifted module."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, out_spec: Any, output: str) -> None:
        self.model = model
        self.gm = gm
        self.out_spec = out_spec
        self.output = output
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.names: dict[fx.Node, str] = {}
        self.table = _translations()
        self.known_modules = torch_module_map()
        nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
        self.call_sizes = Counter(where[0] for n in nodes if (where := _innermost(n)) is not None)

    # ----------------------------------------------------------------- outputs
    def outputs(self) -> list[fx.Node]:
        """The exported nodes the net returns: every output, or one entry of a dict or
        ``ModelOutput`` result."""
        from torch.utils import _pytree as pytree

        flat = list(tensor_leaves(next(n for n in self.gm.graph.nodes if n.op == "output").args))
        structure = pytree.tree_unflatten(list(range(len(flat))), self.out_spec) if self.out_spec else None
        if isinstance(structure, Mapping):
            keys = list(structure.keys())
            field = self.output or ("logits" if "logits" in keys else keys[0])
            if field not in keys:
                raise ModelFormatError(
                    f"the model's result has no entry {field!r}; it has {', '.join(map(repr, keys))}",
                    fix="name one of those as the source's output",
                )
            return [flat[i] for i in pytree.tree_leaves(structure[field])]
        if self.output:
            raise ModelFormatError(
                f"the source names the output {self.output!r}, but the model returns "
                f"{type(structure).__name__}, not a dict or ModelOutput",
                fix="leave output unset: every tensor the model returns is an output",
            )
        return flat

    # ------------------------------------------------------------------- masks
    def _size_only(self, node: fx.Node, seen: dict[fx.Node, bool]) -> bool:
        """Whether ``node``'s value follows from the inputs' sizes alone."""
        if node not in seen:
            if node.op != "call_function" or node.target in (_aten("sym_size").int,):
                seen[node] = node.op == "call_function"
            else:
                seen[node] = all(self._size_only(n, seen) for n in tensor_leaves((node.args, node.kwargs)))
        return seen[node]

    def _evaluate(self, node: fx.Node, batch: int, values: dict[fx.Node, Any]) -> Any:
        if node not in values:
            if node.target is _aten("sym_size").int:
                source = node.args[0].meta["val"]  # type: ignore[union-attr]
                values[node] = batch if node.args[1] == 0 else int(source.shape[node.args[1]])
            else:
                read = lambda n: self._evaluate(n, batch, values)  # noqa: E731
                kwargs = dict(fx.node.map_arg(node.kwargs, read))
                if "device" in kwargs:  # made on the model's device, which may be meta: here on the CPU
                    kwargs["device"] = torch.device("cpu")
                values[node] = node.target(*fx.node.map_arg(node.args, read), **kwargs)  # type: ignore[operator]
        return values[node]

    def keeps_everything(self, mask: Any) -> bool:
        """A mask computed from sizes alone that keeps every position (all True, or all
        zero added), at two batch sizes."""
        if not isinstance(mask, fx.Node) or not self._size_only(mask, {}):
            return False
        for batch in (2, 5):
            try:
                value = self._evaluate(mask, batch, {})
            except Exception:  # noqa: BLE001  (a mask we cannot evaluate is kept)
                return False
            if not isinstance(value, torch.Tensor):
                return False
            keeps = bool(value.all()) if value.dtype == torch.bool else bool((value == 0).all())
            if not keeps:
                return False
        return True

    # ------------------------------------------------------------------ nodes
    def _module_call(self, node: fx.Node) -> Call | None:
        """The node as a call of the module it ran in, where it is that module's whole
        call and the module is one surgery types."""
        where = _innermost(node)
        if where is None or not where[1] or self.call_sizes[where[0]] != 1:
            return None
        path = where[1]
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return None
        if type(module) not in self.known_modules:
            return None
        tensors = tensor_leaves((node.args, node.kwargs))
        if not tensors or tensors[0].op == "get_attr":
            return None
        own = {f"{path}.{name}" for name, _ in module.named_parameters(recurse=False)}
        own |= {f"{path}.{name}" for name, _ in module.named_buffers(recurse=False)}
        if any(n.op != "get_attr" or n.target not in own for n in tensors[1:]):
            return None
        return ("call_module", path, (tensors[0],), {})

    def _call(self, node: fx.Node) -> Call | fx.Node | None:
        """The torch-level call for an ATen node; a node when it is another's value."""
        target = node.target
        name = getattr(target, "__name__", "")
        packet = name.split(".")[0]
        if packet in _CHECKS:
            return None
        if packet in _SAME_VALUE and self._same_value(node):
            return node.args[0]  # type: ignore[return-value]
        module_call = self._module_call(node)
        if module_call is not None:
            return module_call
        build = self.table.get(target)
        if build is not None:
            made = build(*node.args, **node.kwargs)
            return node.args[0] if made is None else made  # type: ignore[return-value]
        return ("call_function", target, node.args, dict(node.kwargs))

    def _same_value(self, node: fx.Node) -> bool:
        first = node.args[0] if node.args else None
        if not isinstance(first, fx.Node):
            return False
        before, after = first.meta.get("val"), node.meta.get("val")
        return (
            isinstance(before, torch.Tensor)
            and isinstance(after, torch.Tensor)
            and before.dtype == after.dtype
            and before.device == after.device
        )

    def _needed(self, outputs: list[fx.Node]) -> set[fx.Node]:
        """The nodes the outputs read, after the kept-everything masks are dropped."""
        for node in self.gm.graph.nodes:
            if node.target is _aten("scaled_dot_product_attention").default and len(node.args) > 3:
                if self.keeps_everything(node.args[3]):
                    node.args = (*node.args[:3], None, *node.args[4:])
        needed: set[fx.Node] = set()
        stack = list(outputs)
        while stack:
            node = stack.pop()
            if node in needed:
                continue
            needed.add(node)
            stack.extend(tensor_leaves((node.args, node.kwargs)))
        return needed

    def run(self) -> tuple[fx.Graph, dict[fx.Node, str]]:
        outputs = self.outputs()
        needed = self._needed(outputs)
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self.graph.placeholder(node.name)
            elif node not in needed:
                continue
            elif node.op == "get_attr":
                continue  # read where a call reads it (a module call reads its own weights)
            elif node.op == "call_function":
                self._translate(node)
            else:
                raise ModelFormatError(
                    f"the exported graph has a {node.op} node {node.name!r} ({node.target}) surgery cannot read",
                    fix="report it with the model: torch.export made a graph of a kind surgery does not know",
                )
        results = [self._read(n) for n in outputs]
        self.graph.output(tuple(results) if len(results) > 1 else results[0])
        return self.graph, self.names

    def _read(self, node: fx.Node) -> Any:
        if node not in self.env and node.op == "get_attr":
            self.env[node] = self.graph.get_attr(node.target)  # type: ignore[arg-type]
        return self.env[node]

    def _translate(self, node: fx.Node) -> None:
        call = self._call(node)
        if call is None:
            return
        if isinstance(call, fx.Node):
            self.env[node] = self._read(call)
            return
        op, target, args, kwargs = call
        read = self._read
        made = self.graph.create_node(op, target, fx.node.map_arg(args, read), fx.node.map_arg(kwargs, read))
        made.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        where = _innermost(node)
        if op != "call_module" and where is not None and where[1]:
            self.names[made] = f"{where[1]}.{_short(target)}"
        self.env[node] = made


class _ExportImporter(GraphImporter):
    """The fx importer over a translated exported graph: calls named after their module,
    attributes read from the model (or from the export, for constants it made)."""

    def __init__(self, gm: fx.GraphModule, names: dict[fx.Node, str], *args: Any) -> None:
        super().__init__(*args)
        self.gm = gm
        self.names = names

    def _node_name(self, node: fx.Node) -> str:
        return self.names.get(node, node.name)

    def get_attr(self, node: fx.Node) -> None:
        target = node.target
        assert isinstance(target, str)
        try:
            get_attr_value(self.model, target)
        except AttributeError:  # a constant torch.export lifted out of the code
            tensor = get_attr_value(self.gm, target)
            self._add(node, Layer(self._unique(target), "Constant", blobs={"value": self._blob(target, tensor, False)}))
            return
        super().get_attr(node)


def export_model(model: nn.Module, shapes: list[tuple[int, ...]], fx_error: Exception | None = None) -> Any:
    """``model`` through ``torch.export`` in eval mode, the batch axis symbolic (its mode
    is restored after)."""
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    # a batch of 2: torch.export specialises sizes 0 and 1, and the batch must stay symbolic
    examples = tuple(torch.zeros((2, *shape[1:]), device=device) for shape in shapes)
    dynamic = tuple({0: torch.export.Dim.AUTO} for _ in shapes)
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, examples, dynamic_shapes=dynamic, strict=False)
    except Exception as error:  # noqa: BLE001  (whatever the model's code raises, named)
        before = f"{fx_error}; " if fx_error is not None else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFormatError(
            f"{before}torch.export cannot export {type(model).__name__} either: {type(error).__name__}: {first}",
            fix="check that the model runs on an input of the source's input_shape; a model neither torch.fx nor "
            "torch.export can capture can be exported to ONNX and read as an onnx source",
        ) from None
    finally:
        model.train(was_training)


def import_exported(
    model: nn.Module,
    shapes: list[tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor] | None,
    name: str,
    fx_error: Exception | None = None,
    output: str = "",
) -> Net:
    """The net of ``model`` captured by torch.export (see the module's docstring)."""
    program = export_model(model, shapes, fx_error)
    gm = program.module()
    graph, names = _Translator(model, gm, program.call_spec.out_spec, output).run()
    importer = _ExportImporter(gm, names, model, shapes, state_dict, name)
    return importer.run(graph, graph)


__all__ = ["export_model", "import_exported"]
