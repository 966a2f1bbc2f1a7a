"""What the torch importer needs from torch.fx: the two traces of a model (train and
eval mode, with the modules whose computation depends on the mode kept as leaves), the
tensors a graph returns, and small helpers over traced nodes."""

from __future__ import annotations

import itertools
import operator
import traceback
from typing import Any

from surgery.errors import ModelFormatError
from surgery.lazy_torch import fx, nn, torch


class _Tracer(fx.Tracer):
    """torch.fx's tracer, also keeping the modules named in ``leaves`` as single calls."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _module_nodes(graph: fx.Graph) -> dict[str, list[tuple[str, str]]]:
    """The traced operations of each innermost module path, in order."""
    found: dict[str, list[tuple[str, str]]] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            found.setdefault(next(reversed(stack)), []).append((node.op, str(node.target)))
    return found


def mode_dependent(model: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph) -> frozenset[str]:
    """Parameter-free modules whose traced computation differs between train and eval
    (timm's DropPath: Python control flow on ``self.training``). Kept as modules, they
    follow the emitted model's mode; traced, the train-mode path would run in eval too."""
    train, evaluated = _module_nodes(train_graph), _module_nodes(eval_graph)
    paths = set()
    for path in set(train) | set(evaluated):
        if not path or train.get(path) == evaluated.get(path):
            continue
        module = model.get_submodule(path)
        if next(itertools.chain(module.parameters(), module.buffers()), None) is None:
            paths.add(path)
    return frozenset(paths)


def trace(model: nn.Module, train: bool, leaves: frozenset[str] = frozenset()) -> fx.Graph:
    was_training = model.training
    model.train(train)
    try:
        return _Tracer(leaves).trace(model)  # the graph only: no GraphModule to compile
    except Exception as error:  # noqa: BLE001  (whatever the model's code raises, named)
        raise ModelFormatError(
            f"torch.fx cannot trace {type(model).__name__}: {type(error).__name__}: {_first_line(error)}"
            f"{_user_frame(error)}",
            fix="make that call traceable (no data-dependent Python control flow), or wrap the offending "
            "submodule so fx treats it as a leaf",
        ) from None
    finally:
        model.train(was_training)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def _user_frame(error: Exception) -> str:
    """' (at file:line: code)' for the innermost frame outside torch, where tracing broke."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {frame.filename}:{frame.lineno}: {frame.line})"


def tensor_leaves(structure: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def collect(node: fx.Node) -> fx.Node:
        found.append(node)
        return node

    fx.node.map_arg(structure, collect)
    return found


def is_output_tuple(node: fx.Node) -> bool:
    """A namedtuple built only to return several heads (GoogLeNet's GoogLeNetOutputs)."""
    target = node.target
    return (
        node.op == "call_function"
        and isinstance(target, type)
        and issubclass(target, tuple)
        and all(user.op == "output" for user in node.users)
    )


def output_leaves(graph: fx.Graph) -> list[fx.Node]:
    """The tensors a traced graph returns, looking through output namedtuples."""
    output = next(n for n in graph.nodes if n.op == "output")
    leaves: list[fx.Node] = []
    for leaf in tensor_leaves(output.args[0]):
        leaves.extend(tensor_leaves((leaf.args, leaf.kwargs)) if is_output_tuple(leaf) else [leaf])
    return leaves


def only_indexed(node: fx.Node) -> bool:
    """Whether a tuple result is only ever read one item at a time (``parts[1]``)."""
    return all(
        user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int)
        for user in node.users
    )


def count_leaves(structure: Any) -> int:
    """The outputs a tuple structure holds (a None item is no output)."""
    if isinstance(structure, tuple):
        return sum(count_leaves(item) for item in structure)
    return 0 if structure is None else 1


def map_structure(structure: Any, names: list[str]) -> Any:
    """A nested tuple of output indices (None: an item that is always None) as the same
    tuple of blob names."""
    if isinstance(structure, tuple):
        return tuple(map_structure(item, names) for item in structure)
    return None if structure is None else names[structure]


def nones_unread(node: fx.Node, structure: tuple) -> bool:
    """Whether a tuple result is only read one item at a time and its None items
    (``nn.MultiheadAttention``'s weights when not asked for) by nothing at all
    (``x, _ = attention(...)`` still reads ``_``, then drops it)."""
    for user in node.users:
        if (
            user.op != "call_function"
            or user.target is not operator.getitem
            or not isinstance(user.args[1], int)
            or not -len(structure) <= user.args[1] < len(structure)
        ):
            return False
        if structure[user.args[1]] is None and user.users:
            return False
    return True


def bind_defaults(graph: fx.Graph, given: int) -> None:
    """Inputs past the ``given`` shapes that have a default (``attn_mask=None``) take it:
    their uses read the default value itself."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in placeholders[given:]:
        if not node.args:
            continue

        default: Any = node.args[0]

        def bound(n: fx.Node, node: fx.Node = node, default: Any = default) -> Any:
            return default if n is node else n

        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, bound)
            user.kwargs = fx.node.map_arg(user.kwargs, bound)


def get_attr_value(model: nn.Module, target: str) -> torch.Tensor:
    owner_path, _, attr = target.rpartition(".")
    return getattr(model.get_submodule(owner_path), attr)


__all__ = [
    "bind_defaults",
    "count_leaves",
    "get_attr_value",
    "is_output_tuple",
    "map_structure",
    "mode_dependent",
    "nones_unread",
    "only_indexed",
    "output_leaves",
    "tensor_leaves",
    "trace",
]
