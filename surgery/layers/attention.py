"""ScaledDotProductAttention: ``softmax(q @ k^T * scale [+ causal mask]) @ v`` over the
last two axes (torch's ``F.scaled_dot_product_attention`` without a mask tensor or
dropout).

ONNX writes the Attention operator from opset 23 when q, k and v are all 3-D or all
4-D with the same leading axes; otherwise (and below opset 23) its formula: MatMul,
Transpose, Mul, the causal mask added as a constant, Softmax over the last axis,
MatMul. Caffe has no such layer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.matmul import matmul_shape
from surgery.layers.registry import LayerType, all_known, register_layer
from surgery.lazy_torch import F, fx

_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
#: The first opset with ONNX's Attention operator.
NATIVE_OPSET = 23


def _scale(scale: float | None, q_shape: Shape) -> float:
    """The factor on ``q @ k^T``: the given one, else torch's ``1 / sqrt(head size)``."""
    return float(scale) if scale is not None else 1.0 / math.sqrt(q_shape[-1])


def _native(q: Shape, k: Shape, v: Shape) -> bool:
    """Whether ONNX's Attention computes torch's result: 4-D ``(N, heads, L, E)`` or 3-D
    ``(N, L, E)`` (as one head) inputs, without torch's broadcasting of leading axes."""
    return len(q) == len(k) == len(v) and len(q) in (3, 4) and q[:-2] == k[:-2] == v[:-2]


def attention_shape(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape of ``softmax(q @ k^T) @ v`` (scaled dot-product attention computed as its
    two products), or None when the operands do not fit. Reads no values."""
    scores = matmul_shape(q, (*k[:-2], k[-1], k[-2]))
    return matmul_shape(scores, v) if scores is not None else None


@register_layer
class ScaledDotProductAttention(LayerType):
    """Params: scale (None: ``1 / sqrt(q.shape[-1])``), is_causal (a query attends to
    keys at its own position and before, top-left aligned). Inputs: query, key, value."""

    name = "ScaledDotProductAttention"
    caffe_syntax = False
    torch_functions = ("torch.nn.functional.scaled_dot_product_attention",)

    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 3)
        q, k, v = all_known(layer, in_shapes)
        if min(len(q), len(k), len(v)) < 2:
            raise ShapeError(f"query, key and value need at least 2 axes, got {list(in_shapes)}", subject=layer.name)
        out = attention_shape(tuple(q), tuple(k), tuple(v))
        if out is None:
            raise ShapeError(
                f"query {list(q)}, key {list(k)} and value {list(v)} do not fit "
                "(q and k share the last axis, k and v the second to last)",
                subject=layer.name,
            )
        return [out]

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        kwargs: dict[str, Any] = {}
        if layer.params.get("is_causal"):
            kwargs["is_causal"] = True
        if layer.params.get("scale") is not None:
            kwargs["scale"] = float(layer.params["scale"])
        return graph.call_function(F.scaled_dot_product_attention, tuple(inputs), kwargs)

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        values = dict(zip(_ARGS, args)) | kwargs
        if set(values) - set(_ARGS) or any(values.get(name, 0) is not None for name in _ARGS[:3]):
            return None  # q, k, v must be tensors (None here)
        scale, causal = values.get("scale"), values.get("is_causal", False)
        # A mask tensor reads None here too: it makes a fourth input, which infer_shapes
        # refuses, so the call is kept as it is.
        if values.get("dropout_p", 0.0) != 0.0 or values.get("enable_gqa", False) is not False:
            return None  # dropout in the attention weights, or grouped heads: kept as a call
        if not isinstance(causal, bool) or not (scale is None or isinstance(scale, (int, float))):
            return None
        return {"scale": None if scale is None else float(scale), "is_causal": causal}

    # --------------------------------------------------------------- onnx
    onnx_ops = ("Attention",)

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        write_attention(
            writer,
            layer.name,
            list(layer.inputs),
            layer.outputs[0],
            writer.in_shapes(layer),
            layer.params.get("scale"),
            bool(layer.params.get("is_causal")),
        )

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        attrs = reader.attrs(node)
        inputs = [n for n in node.input]
        if len(inputs) != 3 or any(o for o in node.output[1:]):
            return None  # a mask, a KV cache, or the extra outputs
        if (
            set(attrs) - {"scale", "is_causal", "q_num_heads", "kv_num_heads"}
            or attrs.get("q_num_heads", 1) != 1
            or attrs.get("kv_num_heads", 1) != 1
        ):
            return None  # softcap, another softmax precision, or heads packed in a 3-D input
        shapes = [reader.shape(reader.blob(n)) for n in inputs]
        if not _native(*shapes):
            return None
        params = {
            "scale": float(attrs["scale"]) if "scale" in attrs else None,
            "is_causal": bool(attrs.get("is_causal", 0)),
        }
        return reader.layer(node, self.name, params, inputs=[reader.blob(n) for n in inputs])


def write_attention(
    writer: Any,
    name: str,
    inputs: list[str],
    output: str,
    shapes: list[Shape],
    scale: float | None = None,
    is_causal: bool = False,
) -> None:
    """Write ``softmax(q @ k^T * scale [+ causal mask]) @ v`` into an ``OnnxWriter``: the
    Attention operator from opset 23 when the shapes fit it, else its formula. The node
    computing ``output`` is called ``name`` (other nodes and constants ``name/...``,
    ``name....``). ``shapes``: those of query, key and value."""
    q, k, v = shapes
    if writer.opset >= NATIVE_OPSET and _native(q, k, v):
        attrs: dict[str, Any] = {"scale": _scale(scale, q)}
        if is_causal:
            attrs["is_causal"] = 1
        if len(q) == 3:
            attrs |= {"q_num_heads": 1, "kv_num_heads": 1}  # 3-D is (N, L, heads * E) to ONNX
        writer.node("Attention", list(inputs), [output], name, **attrs)
    else:
        _write_formula(writer, name, inputs, output, q, k, _scale(scale, q), is_causal)


def _write_formula(
    writer: Any, name: str, inputs: list[str], output: str, q: Shape, k: Shape, scale: float, is_causal: bool
) -> None:
    """The attention written with MatMul / Softmax (any opset, any rank)."""
    query, key, value = inputs
    perm = list(range(len(k)))
    perm[-2:] = perm[-1], perm[-2]
    writer.node("Transpose", [key], [f"{name}/k_t"], f"{name}/k_t", perm=perm)
    writer.node("MatMul", [query, f"{name}/k_t"], [f"{name}/qk"], f"{name}/qk")
    factor = writer.const(f"{name}.scale", np.array(scale, dtype=np.float32))
    scores = f"{name}/scores"
    writer.node("Mul", [f"{name}/qk", factor], [scores], scores)
    if is_causal:
        length, source = q[-2], k[-2]
        allowed = np.tril(np.ones((length, source), dtype=bool))  # torch's: top-left aligned
        mask = writer.const(f"{name}.causal_mask", np.where(allowed, 0.0, -np.inf).astype(np.float32))
        writer.node("Add", [scores, mask], [f"{name}/masked"], f"{name}/masked")
        scores = f"{name}/masked"
    writer.node("Softmax", [scores], [f"{name}/weights"], f"{name}/weights", axis=-1)
    writer.node("MatMul", [f"{name}/weights", value], [output], name)
