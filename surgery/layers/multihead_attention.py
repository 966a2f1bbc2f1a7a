"""MultiheadAttention: torch's ``nn.MultiheadAttention`` in its common form (batch first,
one embedding size for query, key and value, no extra key/value bias, no zero
attention), called as ``attention(q, k, v, need_weights=False)`` without masks: the
attention's output, the weights not computed.

Params: embed_dim E, num_heads H, dropout (on the attention weights while training),
bias_term (biases on the input and output projections). Inputs: query ``(N, L, E)``, key
and value ``(N, S, E)`` (one blob three times for self-attention). Output ``(N, L, E)``.
Blobs are the module's own parameters, named as its ``state_dict`` names them:
``in_proj_weight (3E, E)``, ``in_proj_bias (3E)`` (q, k, v stacked), ``out_proj.weight
(E, E)``, ``out_proj.bias (E)``.

ONNX: the input projections as MatMul + Add, heads split by Reshape + Transpose, the
attention of ``attention.py`` (the Attention operator from opset 23, else its formula),
heads merged, the output projection; the last node carries the layer's name. Caffe has
no such layer.
"""

from __future__ import annotations

import operator
from typing import Any, cast

import numpy as np

from surgery.errors import ShapeError
from surgery.ir import Layer, Shape
from surgery.layers.attention import write_attention
from surgery.layers.registry import LayerType, ModuleRecipe, all_known, register_layer
from surgery.lazy_torch import fx, nn, torch

#: ``nn.MultiheadAttention.forward``'s parameters in order.
_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _common_form(module: nn.MultiheadAttention) -> bool:
    """Whether the module is the form this type expresses (see the module docstring)."""
    return (
        module.batch_first
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and module.bias_v is None
        and not module.add_zero_attn
        and module.in_proj_weight is not None
    )


def _blobs(layer: Layer, writer: Any) -> dict[str, Any]:
    """The weights: the layer's own, or those of the layer owning the module it calls."""
    owner = layer.extra.get("module_path")
    return writer.net.layer(owner).blobs if owner is not None else layer.blobs


@register_layer
class MultiheadAttention(LayerType):
    """Multi-head attention (see the module docstring)."""

    name = "MultiheadAttention"
    caffe_syntax = False
    fresh_output = True
    torch_modules = ("torch.nn.MultiheadAttention",)
    torch_nested_blobs = True
    blob_roles = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")

    # ------------------------------------------------------------- shapes
    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        self.expect_inputs(layer, in_shapes, 3)
        embed = layer.params["embed_dim"]
        if any(s is None or len(s) != 3 or s[-1] != embed for s in in_shapes):
            raise ShapeError(
                f"query, key and value must be (N, length, {embed}), got {list(in_shapes)}", subject=layer.name
            )
        q, k, v = all_known(layer, in_shapes)
        if q[0] != k[0] or k[:2] != v[:2]:
            raise ShapeError(
                f"query {list(q)}, key {list(k)} and value {list(v)} do not fit (one batch; key "
                "and value of one length)",
                subject=layer.name,
            )
        return [q]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        embed = layer.params["embed_dim"]
        shapes: dict[str, Shape] = {"in_proj_weight": (3 * embed, embed), "out_proj.weight": (embed, embed)}
        if layer.params["bias_term"]:
            shapes |= {"in_proj_bias": (3 * embed,), "out_proj.bias": (embed,)}
        return shapes

    def torch_output_structure(self, layer: Layer) -> tuple:
        """``(attn_output, None)``: the weights are not asked for."""
        return (0, None)

    # -------------------------------------------------------------- torch
    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        p = layer.params
        return ModuleRecipe(
            nn.MultiheadAttention,
            {
                "embed_dim": p["embed_dim"],
                "num_heads": p["num_heads"],
                "dropout": p["dropout"],
                "bias": p["bias_term"],
                "batch_first": True,
            },
        )

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        result = graph.call_module(layer.extra.get("module_path", layer.name), tuple(inputs), {"need_weights": False})
        return graph.call_function(operator.getitem, (result, 0))

    def import_torch_module(self, module: nn.MultiheadAttention) -> dict[str, Any] | None:
        if not _common_form(module):
            return None
        return {
            "embed_dim": module.embed_dim,
            "num_heads": module.num_heads,
            "dropout": float(module.dropout),
            "bias_term": module.in_proj_bias is not None,
        }

    def import_torch_module_call(self, module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if not 3 <= len(args) <= len(_ARGS) or set(kwargs) - set(_ARGS[len(args) :]):
            return None  # query, key and value given by position
        values = dict(zip(_ARGS, args)) | kwargs
        if values.get("need_weights", True) is not False or values.get("is_causal", False) is not False:
            return None
        # A mask tensor also reads None here: it makes a fourth input, which infer_shapes refuses.
        if values.get("key_padding_mask") is not None or values.get("attn_mask") is not None:
            return None
        return self.import_torch_module(cast(nn.MultiheadAttention, module))

    # --------------------------------------------------------------- onnx
    def to_onnx(self, layer: Layer, writer: Any) -> None:
        name, p = layer.name, layer.params
        embed, heads = p["embed_dim"], p["num_heads"]
        blobs = _blobs(layer, writer)
        weight = blobs["in_proj_weight"].data.detach()
        bias = blobs["in_proj_bias"].data.detach() if p["bias_term"] else None
        q_shape, k_shape, v_shape = writer.in_shapes(layer)
        split = writer.const(f"{name}.heads_shape", np.array([0, 0, heads, embed // heads], np.int64))
        parts = []
        for index, (tag, source) in enumerate(zip("qkv", layer.inputs)):
            rows = slice(index * embed, (index + 1) * embed)
            projected = self._linear(
                writer,
                layer,
                f"{name}/{tag}_proj",
                source,
                weight[rows],
                None if bias is None else bias[rows],
                f"in_proj.{tag}",
            )
            writer.node("Reshape", [projected, split], [f"{name}/{tag}_heads"], f"{name}/{tag}_heads")
            writer.node(
                "Transpose", [f"{name}/{tag}_heads"], [f"{name}/{tag}_nhld"], f"{name}/{tag}_nhld", perm=[0, 2, 1, 3]
            )  # (N, H, length, E / H)
            parts.append(f"{name}/{tag}_nhld")
        head_shapes: list[Shape] = [(s[0], heads, s[1], embed // heads) for s in (q_shape, k_shape, v_shape)]
        write_attention(writer, f"{name}/attention", parts, f"{name}/attention", head_shapes)
        writer.node("Transpose", [f"{name}/attention"], [f"{name}/merge"], f"{name}/merge", perm=[0, 2, 1, 3])
        merged = writer.const(f"{name}.merged_shape", np.array([0, 0, embed], np.int64))
        writer.node("Reshape", [f"{name}/merge", merged], [f"{name}/merged"], f"{name}/merged")
        out_bias = blobs["out_proj.bias"].data.detach() if p["bias_term"] else None
        self._linear(
            writer,
            layer,
            name,
            f"{name}/merged",
            blobs["out_proj.weight"].data.detach(),
            out_bias,
            "out_proj",
            output=layer.outputs[0],
        )

    @staticmethod
    def _linear(
        writer: Any,
        layer: Layer,
        name: str,
        source: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        role: str,
        output: str | None = None,
    ) -> str:
        """``source @ weight^T + bias`` as MatMul (+ Add), the last node called ``name``; its output."""
        output = output or name
        weight_t = writer.weight(layer, f"{role}.weight_t", weight.t())
        if bias is None:
            writer.node("MatMul", [source, weight_t], [output], name)
            return output
        writer.node("MatMul", [source, weight_t], [f"{name}/matmul"], f"{name}/matmul")
        writer.node("Add", [f"{name}/matmul", writer.weight(layer, f"{role}.bias", bias)], [output], name)
        return output
