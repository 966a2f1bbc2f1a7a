"""Composite modules of a traced torch model (a ResNet's ``layer3.1``, a ViT's
``encoder.layers.encoder_layer_5``): torch.fx traces through them, so no layer carries
their name. This finds, for each, the one blob that is its output, so a spec can name the
module where it names a position in the net (``cut { at: "layer3" }``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from surgery.ir import Net
from surgery.lazy_torch import fx


def _calls(graph: fx.Graph) -> dict[str, tuple[str, list[fx.Node]]]:
    """Each call of a module (fx keys a second call of ``m`` as ``m@1``): its module path
    and the nodes traced inside it, in graph order."""
    calls: dict[str, tuple[str, list[fx.Node]]] = {}
    for node in graph.nodes:
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            calls.setdefault(key, (path, []))[1].append(node)
    return calls


def _escaping(nodes: list[fx.Node]) -> list[fx.Node]:
    """The nodes of one call whose value is read outside it (the graph's output counts)."""
    inside = set(nodes)
    return [node for node in nodes if any(user not in inside for user in node.users)]


def record_module_outputs(
    graph: fx.Graph,
    net: Net,
    blob_after: Callable[[fx.Node, fx.Node], str | None],
    tuples: dict[fx.Node, tuple],
    is_tensor: Callable[[str], bool],
) -> None:
    """Fill ``net.module_outputs`` (module path -> its output blob) and
    ``net.module_refusals`` (path -> why it has no single output) from the traced
    ``graph``. ``blob_after(node, last)`` is a node's blob as it stood once ``last`` ran
    (a later in-place call may change it). Leaf modules are layers already, under their
    own name, and are skipped."""
    calls = _calls(graph)
    leaves = {node.target for node in graph.nodes if node.op == "call_module"}
    times = Counter(path for path, _ in calls.values())
    for path, nodes in calls.values():
        if not path or path in leaves or path in net or path in net.module_outputs or path in net.module_refusals:
            continue
        if times[path] > 1:
            net.module_refusals[path] = f"the model calls it {times[path]} times, and each call has its own output"
            continue
        escaping = _escaping(nodes)
        if any(node in tuples for node in escaping):
            net.module_refusals[path] = "it returns a tuple of tensors"
            continue
        found = (blob_after(n, nodes[-1]) for n in escaping)
        blobs = list(dict.fromkeys(blob for blob in found if blob is not None and is_tensor(blob)))
        if len(blobs) == 1:
            net.module_outputs[path] = blobs[0]
        elif blobs:
            net.module_refusals[path] = (
                f"{len(blobs)} tensors computed inside it are read outside it ({', '.join(repr(b) for b in blobs)})"
            )
