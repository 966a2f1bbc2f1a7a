"""Torch importer: any ``nn.Module`` traced with torch.fx becomes a :class:`Net` (read by
:mod:`surgery.importers.torch_graph`); one fx cannot trace goes through torch.export
(:mod:`surgery.importers.torch_export`).

The model is traced twice: in train mode for the full graph (GoogLeNet's auxiliary
heads only exist there), and in eval mode to learn the deploy outputs; layers that
only the train-mode outputs need are marked ``phase="train"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from surgery.errors import ModelFormatError
from surgery.importers.torch_graph import GraphImporter
from surgery.importers.torch_trace import mode_dependent, trace
from surgery.ir import Net
from surgery.lazy_torch import nn, torch


def import_torch(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[tuple[int, ...]],
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    name: str | None = None,
    output: str = "",
) -> Net:
    """Trace ``model`` into a :class:`Net`: with torch.fx, else (where fx cannot trace it,
    or ``output`` is given) with torch.export (:mod:`surgery.importers.torch_export`).

    Args:
        model: any ``nn.Module`` torch.fx can trace. It is not modified (its train/eval
            mode is restored after tracing).
        input_shape: the input's shape, batch axis first, or a list of shapes for a
            model with several inputs.
        state_dict: weights to use instead of the model's own, read lazily (pass a
            model built on the meta device and ``torch.load(path, mmap=True)`` to never
            hold two copies).
        name: the net's name (default: the model's class name).
        output: for a model returning a dict or a Hugging Face ``ModelOutput``, the entry
            that is the net's output (default ``logits`` where there is one).

    Returns:
        The net; blobs share storage with ``model``'s tensors (no copy).

    Example:
        >>> import torchvision
        >>> net = import_torch(torchvision.models.resnet18(), (1, 3, 224, 224))
        >>> net.layer("fc").type
        'InnerProduct'
    """
    shapes: list[tuple[int, ...]]
    if input_shape and isinstance(input_shape[0], int):  # one input's shape
        shapes = [tuple(input_shape)]
    else:  # one shape per input
        shapes = [tuple(s) for s in cast(list[tuple[int, ...]], input_shape)]
    name = name or type(model).__name__
    try:
        if output:
            raise ModelFormatError(f"the source names the output {output!r}")
        train_graph = trace(model, train=True)
    except ModelFormatError as fx_error:
        # torch.fx cannot trace it (Python control flow on tensors, iteration over them:
        # Hugging Face transformers); torch.export runs the code with fake tensors instead
        from surgery.importers.torch_export import import_exported

        net = import_exported(model, shapes, state_dict, name, None if output else fx_error, output)
    else:
        eval_graph = trace(model, train=False)
        leaves = mode_dependent(model, train_graph, eval_graph)
        if leaves:
            train_graph, eval_graph = trace(model, True, leaves), trace(model, False, leaves)
        net = GraphImporter(model, shapes, state_dict, name).run(train_graph, eval_graph)
    net.shapes()  # validate now: a bad input shape fails at import, naming the layer
    return net


__all__ = ["import_torch"]
