"""Which traced sizes follow the batch: the net's shapes at a second batch size.

torch.fx records ``n, c, h, w = x.shape``, ``h // p`` and ``torch._assert(c == 768)``
as calls. The torch importer computes such values at import instead of keeping them
as layers: a value that is the same at the import's batch size and at a second one is
a constant of the model (a channel count, a window area) and is folded into the calls
that read it; a value that changes with the batch (``n``, ``n * windows``) is handed to
the layer types that can express it (Reshape's 0 and -1), and otherwise stays a
runtime call. The second batch size costs nothing: shapes are inferred, never run on
data (opaque calls run on the meta device).
"""

from __future__ import annotations

from typing import Any

from surgery.ir import Layer, Net
from surgery.layers import layer_type
from surgery.layers.meta_run import NonTensor
from surgery.lazy_torch import torch

#: The second batch size is the import's plus this prime, so ``n // k`` and ``n % k``
#: differ between the two for every k below it: a size that follows the batch cannot
#: look constant by chance.
ALTERNATE_GAP = 1009


def foldable(value: Any) -> bool:
    """A Python value that can stand in the emitted code as a literal (never a device:
    the import runs on the meta device)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return True
    if isinstance(value, (tuple, list)):
        return all(foldable(item) for item in value)
    return False


class BatchProbe:
    """Shapes of a net under construction at a second batch size, computed on demand
    for the blobs that need them (the ancestors of size queries only)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.shapes: dict[str, Any] = {}  # blob -> shape / NonTensor at the second batch size; None: cannot tell

    @staticmethod
    def alternate_batch(batch: int) -> int:
        return batch + ALTERNATE_GAP

    def shape(self, blob: str) -> Any:
        """``blob``'s shape (its value, for a non-tensor) at the second batch size, or
        None when some layer it depends on does not run at another batch size."""
        if blob not in self.shapes:
            self._fill(self.net.producer(blob))
        return self.shapes[blob]

    def infer(self, layer: Layer) -> list[Any]:
        """The output shapes of ``layer`` (in the net or not) at the second batch size."""
        for blob in layer.inputs:
            self.shape(blob)
        return self._infer(layer)

    def _fill(self, last: Layer) -> None:
        """Infer ``last`` and every ancestor not inferred yet, producers first (a loop,
        not recursion: nets are thousands of layers deep)."""
        stack: list[tuple[Layer, bool]] = [(last, False)]
        while stack:
            layer, inputs_ready = stack.pop()
            if layer.outputs[0] in self.shapes:
                continue
            if inputs_ready:
                self.shapes.update(zip(layer.outputs, self._infer(layer)))
                continue
            stack.append((layer, True))
            stack.extend((self.net.producer(b), False) for b in layer.inputs if b not in self.shapes)

    def _infer(self, layer: Layer) -> list[Any]:
        if layer.type == "Input":
            batch, *rest = layer.params["shape"]
            return [(self.alternate_batch(batch), *rest)]
        in_shapes = [self.shapes[b] for b in layer.inputs]
        if any(shape is None for shape in in_shapes):
            return [None] * len(layer.outputs)
        try:
            return layer_type(layer.type).infer_shapes(layer, in_shapes)
        except Exception:  # noqa: BLE001  any failure only means "cannot tell": nothing is folded
            return [None] * len(layer.outputs)


def same_value(value: NonTensor, alternate: Any) -> bool:
    """Whether a non-tensor value is the same at the second batch size."""
    return (
        isinstance(alternate, NonTensor)
        and type(alternate.value) is type(value.value)
        and alternate.value == value.value
    )
