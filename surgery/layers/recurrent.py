"""What LSTM, GRU and RNN layers share: shapes, blobs, the torch module, the ONNX form.

Each recurrent type (``lstm.py``, ``gru.py``, ``rnn.py``) is a subclass that states its
per-format facts: the number of gates, the number of state tensors, its torch class and
its ONNX operator with that operator's gate order.

Params (a plain dict; :func:`recurrent_params` builds one with the defaults):
    num_output: hidden size H.
    num_layers: stacked layers L (default 1).
    bidirectional: a second direction, from the last step to the first (D = 2).
    return_sequences: True (default): every step's output ``(N, T, D*H)``; False: the
        last step's ``(N, D*H)`` (the forward direction's final state, then the backward
        direction's, which has seen the whole clip from the end).
    bias_term: learn biases (default True).
    dropout: torch's dropout between stacked layers while training (default 0).
    state_batch_first: the state inputs/outputs are ``(N, L*D, H)`` instead of torch's
        ``(L*D, N, H)`` (the streaming step model uses this, so its batch axis is 0).

Inputs: ``x (N, T, F)``, optionally the initial states (LSTM: h0, c0; GRU/RNN: h0).
Outputs: ``y``, and, when the layer has more than one top, the final states in the
same layout as the initial ones.

Blobs (roles are torch's parameter names, gates in torch's order): for each layer l and
direction (suffix ``""`` or ``"_reverse"``): ``weight_ih_l{l}`` (G*H, F or D*H),
``weight_hh_l{l}`` (G*H, H), ``bias_ih_l{l}`` (G*H), ``bias_hh_l{l}`` (G*H).

New weights default to uniform(-1/sqrt(H), 1/sqrt(H)) (torch's own initialisation),
biases to 0 (LSTM: forget gate 1, see ``lstm.py``).
"""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar

import numpy as np

from surgery.errors import ModelFormatError, ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.recurrent_onnx import OnnxWalk
from surgery.layers.registry import LayerType, ModuleRecipe, check_param, known
from surgery.lazy_torch import fx, nn, resolve, torch


def recurrent_params(
    num_output: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    return_sequences: bool = True,
    bias_term: bool = True,
    dropout: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    """The params dict of a recurrent layer (importers from any format build this)."""
    return {
        "num_output": int(num_output),
        "num_layers": int(num_layers),
        "bidirectional": bool(bidirectional),
        "return_sequences": bool(return_sequences),
        "bias_term": bool(bias_term),
        "dropout": float(dropout),
        **extra,
    }


#: Why a Caffe LRCN prototxt's LSTM does not fit (its second bottom is Caffe's `cont` blob).
_CAFFE_CONVENTION = (
    "the inputs are a batch-first (N, T, features) sequence and optionally the initial states; "
    "Caffe's own LSTM/RNN layers (a time-major sequence plus a `cont` blob) are not read: build the "
    "recurrent head with the `sequence` op instead"
)


def directions(layer: Layer) -> int:
    return 2 if layer.params["bidirectional"] else 1


def suffixes(layer: Layer) -> tuple[str, ...]:
    return ("", "_reverse") if layer.params["bidirectional"] else ("",)


class RecurrentType(LayerType):
    """Base class of LSTM / GRU / RNN. Subclasses set the class attributes below."""

    #: gate blocks per weight (LSTM 4, GRU 3, RNN 1)
    gates: ClassVar[int] = 1
    #: state tensors (LSTM 2: h and c; GRU/RNN 1: h)
    states: ClassVar[int] = 1
    #: The torch module class by dotted name (``"torch.nn.LSTM"``).
    torch_class: ClassVar[str]
    onnx_op: ClassVar[str]
    #: for each ONNX gate block, the torch gate block it holds
    onnx_gate_order: ClassVar[tuple[int, ...]] = (0,)
    caffe_param_field = "recurrent_param"
    #: A recurrent layer carries state from step to step: a streaming step model can
    #: run it one frame at a time (with its state as explicit inputs and outputs).
    recurrent = True

    # ------------------------------------------------------------- shapes
    def state_shape(self, layer: Layer, batch: int) -> Shape:
        p = layer.params
        stacked = p["num_layers"] * directions(layer)
        return (batch, stacked, p["num_output"]) if p.get("state_batch_first") else (stacked, batch, p["num_output"])

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        if len(in_shapes) not in (1, 1 + self.states):
            raise ShapeError(
                f"takes the sequence and optionally {self.states} initial state(s), got {len(in_shapes)} inputs",
                fix=_CAFFE_CONVENTION,
            )
        x = in_shapes[0]
        if x is None or len(x) != 3:
            raise ShapeError(
                f"expects a (N, T, features) input, got {x}",
                fix="put it in a `sequence` head (after the per-frame layers), or make each step's "
                "features one vector first (Flatten from axis 2)",
            )
        batch, steps, features = x
        weight = layer.blobs.get("weight_ih_l0")
        if weight is not None and weight.shape[1] != features:
            raise ShapeError(
                f"weight expects {weight.shape[1]} input features, the input {x} gives {features}",
                fix="resize or reinitialise this layer (replace), or fix the layer that feeds it",
            )
        state = self.state_shape(layer, batch)
        for shape in in_shapes[1:]:
            if tuple(shape or ()) != state:
                raise ShapeError(f"an initial state has shape {shape}, expected {state}", fix=_CAFFE_CONVENTION)
        width = directions(layer) * layer.params["num_output"]
        y = (batch, steps, width) if layer.params["return_sequences"] else (batch, width)
        return [y] + [state] * self.states if len(layer.outputs) > 1 else [y]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        p = layer.params
        hidden, rows = p["num_output"], self.gates * p["num_output"]
        shapes: dict[str, Shape] = {}
        for index in range(p["num_layers"]):
            width = known(layer, in_shapes)[2] if index == 0 else directions(layer) * hidden
            for sfx in suffixes(layer):
                shapes[f"weight_ih_l{index}{sfx}"] = (rows, width)
                shapes[f"weight_hh_l{index}{sfx}"] = (rows, hidden)
                if p["bias_term"]:
                    shapes[f"bias_ih_l{index}{sfx}"] = (rows,)
                    shapes[f"bias_hh_l{index}{sfx}"] = (rows,)
        return shapes

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        if role.startswith("bias"):
            return {"type": "constant", "value": 0.0}
        bound = 1.0 / math.sqrt(layer.params["num_output"])
        return {"type": "uniform", "min": -bound, "max": bound}

    # -------------------------------------------------------------- torch
    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(resolve(self.torch_class), self.torch_kwargs(layer, known(layer, in_shapes)[2]))

    def torch_kwargs(self, layer: Layer, features: int) -> dict[str, Any]:
        p = layer.params
        return {
            "input_size": features,
            "hidden_size": p["num_output"],
            "num_layers": p["num_layers"],
            "bias": p["bias_term"],
            "batch_first": True,
            "dropout": p.get("dropout", 0.0),
            "bidirectional": p["bidirectional"],
        }

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> Any:
        batch_first_state = layer.params.get("state_batch_first", False)
        args: tuple = (inputs[0],)
        if len(inputs) > 1:
            given = [
                graph.call_method("contiguous", (graph.call_method("transpose", (s, 0, 1)),))
                if batch_first_state
                else s
                for s in inputs[1:]
            ]
            args = (inputs[0], tuple(given) if self.states > 1 else given[0])
        result = graph.call_module(layer.extra.get("module_path", layer.name), args)
        y = graph.call_function(operator.getitem, (result, 0))
        final = graph.call_function(operator.getitem, (result, 1))
        finals = (
            [graph.call_function(operator.getitem, (final, i)) for i in range(self.states)]
            if self.states > 1
            else [final]
        )
        if not layer.params["return_sequences"]:
            # the top layer's final state per direction -> (N, D*H)
            top = graph.call_function(operator.getitem, (finals[0], slice(-directions(layer), None)))
            y = graph.call_method("flatten", (graph.call_method("transpose", (top, 0, 1)), 1))
        if len(layer.outputs) == 1:
            return y
        if batch_first_state:
            finals = [graph.call_method("transpose", (s, 0, 1)) for s in finals]
        return (y, *finals)

    def import_torch_module(self, module: nn.RNNBase) -> dict[str, Any] | None:
        if not module.batch_first or module.proj_size:
            return None  # time-major or projected: carried as an opaque module
        return recurrent_params(
            module.hidden_size,
            module.num_layers,
            module.bidirectional,
            True,
            module.bias,
            module.dropout,
            **self.torch_extra(module),
        )

    def torch_extra(self, module: nn.Module) -> dict[str, Any]:
        return {}

    def torch_output_structure(self, layer: Layer) -> tuple:
        """torch's result ``(y, h_n)`` / ``(y, (h_n, c_n))`` as indices into the outputs."""
        return (0, (1, 2)) if self.states > 1 else (0, 1)

    # --------------------------------------------------------------- onnx
    def onnx_attrs(self, layer: Layer) -> dict[str, Any]:
        return {}

    def _onnx_blocks(self, tensor: torch.Tensor) -> np.ndarray:
        """Gate blocks from torch's order to the ONNX operator's."""
        blocks = tensor.detach().cpu().reshape(self.gates, -1, *tensor.shape[1:])
        return blocks[list(self.onnx_gate_order)].reshape(tensor.shape).numpy()

    def _onnx_weights(self, layer: Layer, writer: Any, index: int) -> list[str]:
        w, r, b = [], [], []
        for sfx in suffixes(layer):
            w.append(self._onnx_blocks(layer.blobs[f"weight_ih_l{index}{sfx}"].data))
            r.append(self._onnx_blocks(layer.blobs[f"weight_hh_l{index}{sfx}"].data))
            if layer.params["bias_term"]:
                b.append(
                    np.concatenate(
                        [
                            self._onnx_blocks(layer.blobs[f"bias_ih_l{index}{sfx}"].data),
                            self._onnx_blocks(layer.blobs[f"bias_hh_l{index}{sfx}"].data),
                        ]
                    )
                )
        names = [
            writer.const(f"{layer.name}.W_l{index}", np.stack(w)),
            writer.const(f"{layer.name}.R_l{index}", np.stack(r)),
        ]
        names.append(writer.const(f"{layer.name}.B_l{index}", np.stack(b)) if b else "")
        return names

    def _onnx_state_in(self, layer: Layer, writer: Any, blob: str, index: int) -> str:
        """Layer ``index``'s slice of a state input, as the operator's (D, N, H)."""
        d = directions(layer)
        batch_first = layer.params.get("state_batch_first", False)
        name = f"{layer.name}/{blob}_l{index}"
        starts = writer.const(f"{name}.starts", np.array([index * d], np.int64))
        ends = writer.const(f"{name}.ends", np.array([(index + 1) * d], np.int64))
        axes = writer.const(f"{name}.axes", np.array([1 if batch_first else 0], np.int64))
        writer.node("Slice", [blob, starts, ends, axes], [name], name)
        if not batch_first:
            return name
        writer.node("Transpose", [name], [name + "/t"], name + "/t", perm=[1, 0, 2])
        return name + "/t"

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        p = layer.params
        name, d = layer.name, directions(layer)
        seq = f"{name}/time_major"
        writer.node("Transpose", [layer.inputs[0]], [seq], seq, perm=[1, 0, 2])  # (T, N, F)
        finals: list[list[str]] = [[] for _ in range(self.states)]
        for index in range(p["num_layers"]):
            tag = f"{name}/l{index}"
            inputs = [seq, *self._onnx_weights(layer, writer, index), ""]
            inputs += [self._onnx_state_in(layer, writer, blob, index) for blob in layer.inputs[1:]]
            outputs = [f"{tag}/Y", *(f"{tag}/Y_{s}" for s in "hc"[: self.states])]
            writer.node(
                self.onnx_op,
                inputs,
                outputs,
                tag if p["num_layers"] > 1 else name,
                hidden_size=p["num_output"],
                direction="bidirectional" if d == 2 else "forward",
                **self.onnx_attrs(layer),
            )
            for state, blob in zip(finals, outputs[1:]):
                state.append(blob)
            if index == p["num_layers"] - 1 and not p["return_sequences"]:
                break  # the output is the top layer's final state, not Y
            # Y is (T, D, N, H): the next layer (and the output) read (T, N, D*H)
            writer.node("Transpose", [f"{tag}/Y"], [f"{tag}/TNDH"], f"{tag}/TNDH", perm=[0, 2, 1, 3])
            seq = f"{tag}/seq"
            writer.node(
                "Reshape", [f"{tag}/TNDH", writer.const(f"{tag}.seq_shape", np.array([0, 0, -1], np.int64))], [seq], seq
            )
        y = layer.outputs[0]
        if p["return_sequences"]:
            writer.node("Transpose", [seq], [y], f"{name}/batch_first", perm=[1, 0, 2])
        else:
            top = finals[0][-1]  # the top layer's final h, (D, N, H)
            writer.node("Transpose", [top], [f"{name}/last"], f"{name}/last", perm=[1, 0, 2])
            writer.node(
                "Reshape",
                [f"{name}/last", writer.const(f"{name}.last_shape", np.array([0, -1], np.int64))],
                [y],
                f"{name}/last_step",
            )
        for state, out in zip(finals, layer.outputs[1:]):
            stacked = out if not p.get("state_batch_first") else f"{out}/stacked"
            writer.node("Concat", state, [stacked], stacked, axis=0)
            if stacked != out:
                writer.node("Transpose", [stacked], [out], f"{out}/batch_first", perm=[1, 0, 2])

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        """The form :meth:`to_onnx` writes: a Transpose to time-major, the operator (one per
        stacked layer, no initial state), then back to batch first (every step) or the
        top layer's final state (the last step). Other arrangements return None."""
        walk = OnnxWalk(self, node, reader)
        if not walk.run():
            return None
        reader.net.remove_layer(walk.permute.name)  # the Transpose to time-major is part of this layer
        layer = reader.layer(
            node,
            self.name,
            recurrent_params(**walk.params),
            inputs=[walk.source],
            blobs=walk.blobs(),
            outputs=[walk.output],
        )
        for value in walk.consumed:  # the nodes read as part of this layer are not imported again
            reader.alias[value] = walk.output
        return layer

    # -------------------------------------------------------------- caffe
    def from_caffe(self, param: Any) -> dict[str, Any]:
        if param.expose_hidden:
            raise ModelFormatError(
                "expose_hidden recurrent layers are not supported",
                fix="leave expose_hidden unset: the streaming step model exposes the state itself",
            )
        check_param(param.num_output >= 1, f"num_output (the hidden size) must be at least 1, got {param.num_output}")
        if self.name == "RNN":
            check_param(
                param.nonlinearity in ("tanh", "relu"),
                f'nonlinearity must be "tanh" or "relu", got {param.nonlinearity!r}',
            )
        extra = {"nonlinearity": param.nonlinearity} if self.name == "RNN" else {}
        return recurrent_params(
            param.num_output,
            param.num_layers or 1,
            param.bidirectional,
            param.return_sequences,
            param.bias_term,
            **extra,
        )

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        roles: dict[str, Any] = {}
        for index in range(param.num_layers or 1):
            for sfx in ("", "_reverse") if param.bidirectional else ("",):
                for kind in ("ih", "hh"):
                    if param.HasField("weight_filler"):
                        roles[f"weight_{kind}_l{index}{sfx}"] = param.weight_filler
                    if param.HasField("bias_filler"):
                        roles[f"bias_{kind}_l{index}{sfx}"] = param.bias_filler
        return roles
