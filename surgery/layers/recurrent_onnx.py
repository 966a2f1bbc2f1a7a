"""Reading a recurrent layer back from ONNX: the node pattern ``RecurrentType.to_onnx``
writes (a Transpose to time-major, one operator per stacked layer without initial state,
then the Transpose back, or the top layer's final state), walked from its first operator.
The gate blocks go back to torch's order with the type's ``onnx_gate_order``."""

from __future__ import annotations

from typing import Any

import numpy as np


class OnnxWalk:
    """Reads the node pattern :meth:`RecurrentType.to_onnx` writes, from its first operator."""

    def __init__(self, kind: Any, node: Any, reader: Any) -> None:
        self.kind, self.node, self.reader = kind, node, reader
        self.ops: list[Any] = []
        self.consumed: list[str] = []
        self.params: dict[str, Any] = {}
        self.output = ""

    def readers(self, value: str) -> list[Any]:
        return [n for n in self.reader.model.graph.node if value in n.input]

    def only_reader(self, value: str, op_type: str, **attrs: Any) -> Any:
        found = self.readers(value)
        if len(found) != 1 or found[0].op_type != op_type or found[0].input[0] != value:
            return None
        given = self.reader.attrs(found[0])
        return found[0] if all(list(given.get(k, [])) == v for k, v in attrs.items()) else None

    def reshaped(self, value: str, target: list[int]) -> Any:
        found = self.only_reader(value, "Reshape")
        return found if found is not None and self.reader.const_list(found.input[1]) == target else None

    def run(self) -> bool:
        reader = self.reader
        x = reader.alias.get(self.node.input[0], self.node.input[0])
        if not reader.net.has_blob(x) or len(self.readers(self.node.input[0])) != 1:
            return False
        self.permute = reader.net.producer(x)
        if (
            self.permute.type != "Permute"
            or list(self.permute.params.get("order") or []) != [1, 0, 2]
            or reader.net.consumers(x)
        ):
            return False
        self.source = self.permute.inputs[0]
        node, seq = self.node, None
        while True:
            if not self.accept(node):
                return False
            seq = self.next_sequence(node)
            following = self.only_reader(seq, self.kind.onnx_op) if seq else None
            if following is None:
                break
            node = following
        return self.finish(seq)

    def accept(self, op: Any) -> bool:
        attrs = self.reader.attrs(op)
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if (
            any(i for i in op.input[4:])
            or attrs.get("layout", 0)
            or "clip" in attrs
            or attrs.get("input_forget", 0)
            or direction not in ("forward", "bidirectional")
            or self.reader.const_shape(op.input[1]) is None
            or self.reader.const_shape(op.input[2]) is None
        ):
            return False
        if self.kind.name == "GRU" and attrs.get("linear_before_reset", 0) != 1:
            return False
        if self.kind.name == "RNN":
            activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", ["Tanh"])]
            if len(set(activations)) != 1 or activations[0] not in ("Tanh", "Relu"):
                return False
            self.params["nonlinearity"] = activations[0].lower()
        settings = {
            "num_output": int(attrs["hidden_size"]),
            "bidirectional": direction == "bidirectional",
            "bias_term": len(op.input) > 3 and bool(op.input[3]),
        }
        if self.ops and any(self.params[k] != v for k, v in settings.items()):
            return False
        self.params.update(settings)
        self.ops.append(op)
        self.consumed += [o for o in op.output if o]
        return True

    def next_sequence(self, op: Any) -> str | None:
        """Y (T, D, N, H) read back as (T, N, D*H); None when Y is unused."""
        if not self.readers(op.output[0]):
            return None
        swap = self.only_reader(op.output[0], "Transpose", perm=[0, 2, 1, 3])
        merge = self.reshaped(swap.output[0], [0, 0, -1]) if swap is not None else None
        if merge is None:
            return ""
        self.consumed += [swap.output[0], merge.output[0]]
        return merge.output[0]

    def finish(self, seq: str | None) -> bool:
        states = [o for op in self.ops for o in op.output[1:] if o]
        if seq:  # every step, batch first
            back = self.only_reader(seq, "Transpose", perm=[1, 0, 2])
            if back is None or any(self.readers(o) for o in states):
                return False
            self.output, self.params["return_sequences"] = back.output[0], True
        elif seq is None:  # the top layer's final h, batch first, flattened
            top_h = self.ops[-1].output[1]
            back = self.only_reader(top_h, "Transpose", perm=[1, 0, 2]) if top_h else None
            flat = self.reshaped(back.output[0], [0, -1]) if back is not None else None
            if back is None or flat is None or any(self.readers(o) for o in states if o != top_h):
                return False
            self.consumed.append(back.output[0])
            self.output, self.params["return_sequences"] = flat.output[0], False
        else:
            return False
        self.params["num_layers"] = len(self.ops)
        return True

    def blobs(self) -> dict[str, Any]:
        """Lazy blobs in torch's gate order from the operators' W, R, B."""
        kind, reader = self.kind, self.reader
        to_torch = [kind.onnx_gate_order.index(k) for k in range(kind.gates)]
        blobs = {}
        for index, op in enumerate(self.ops):
            for d, sfx in enumerate(("", "_reverse")[: 2 if self.params["bidirectional"] else 1]):
                for role, name, part in (
                    ("weight_ih", op.input[1], None),
                    ("weight_hh", op.input[2], None),
                    ("bias_ih", op.input[3] if len(op.input) > 3 else "", 0),
                    ("bias_hh", op.input[3] if len(op.input) > 3 else "", 1),
                ):
                    if not name:
                        continue
                    shape = reader.const_shape(name)
                    rows = shape[1] // (2 if part is not None else 1)
                    out = (rows,) if part is not None else (rows, shape[2])
                    blobs[f"{role}_l{index}{sfx}"] = reader.param_derived(
                        name,
                        out,
                        lambda a, d=d, part=part, rows=rows: _torch_blocks(
                            a[d] if part is None else a[d][part * rows : (part + 1) * rows], to_torch, kind.gates
                        ),
                    )
        return blobs


def _torch_blocks(array: np.ndarray, order: list[int], gates: int) -> np.ndarray:
    blocks = array.reshape(gates, -1, *array.shape[1:])
    return np.ascontiguousarray(blocks[order].reshape(array.shape))
