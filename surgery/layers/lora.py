"""Low-rank adapters on an InnerProduct or a Convolution (LoRA, as PEFT defines them).

An adapted layer carries ``params["lora"]`` (rank, alpha, dropout, use_rslora) and two
more blobs: ``lora_A`` (rank x in_features; for a convolution, rank x C x kernel, a
convolution with the layer's own kernel, stride, padding and dilation) and ``lora_B``
(out x rank; for a convolution, a 1x1 one). The layer computes
``W x + b + scale * B (A (dropout(x)))``, ``scale = alpha / rank`` (``alpha / sqrt(rank)``
with rsLoRA). The emitted torch module is :class:`surgery.layers.runtime.LoRALinear` or
``LoRAConv*d`` (the adapter visible by name, trained through the param groups); ONNX and
Caffe hold the merged weight ``W + scale * B A`` (:func:`merged`), so a deploy file has
exactly the source's nodes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from surgery.errors import SpecError
from surgery.ir import Layer, ParamBlob, Shape
from surgery.lazy_torch import torch

ROLES = ("lora_A", "lora_B")


def settings(layer: Layer) -> dict[str, Any] | None:
    """The layer's adapter settings, or None for a layer without one."""
    return layer.params.get("lora")


def scale(lora: dict[str, Any]) -> float:
    """The factor on the adapter's output."""
    rank = int(lora["rank"])
    return float(lora["alpha"]) / (math.sqrt(rank) if lora.get("use_rslora") else rank)


def shapes(layer: Layer, weight: Shape) -> dict[str, Shape]:
    """The adapter's blob shapes for a layer whose weight has shape ``weight``."""
    lora = settings(layer)
    if lora is None:
        return {}
    rank = int(lora["rank"])
    out, inner = weight[0], weight[1:]
    return {"lora_A": (rank, *inner), "lora_B": (out, rank, *([1] * (len(weight) - 2)))}


def check(layer: Layer) -> None:
    """Refuse the layers this adapter does not fit (a grouped convolution)."""
    if layer.type == "Convolution" and layer.params.get("group", 1) != 1:
        raise SpecError(
            f"layer {layer.name!r} is a grouped convolution (group {layer.params['group']}); LoRA adapts "
            "convolutions with group 1 only (PEFT's too)",
            subject=layer.name,
        )


def delta(layer: Layer) -> np.ndarray:
    """``scale * B A`` in the weight's shape (float32)."""
    lora = settings(layer)
    assert lora is not None
    a = np.asarray(layer.blobs["lora_A"].array(), dtype=np.float64)
    b = np.asarray(layer.blobs["lora_B"].array(), dtype=np.float64)
    product = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
    return (scale(lora) * product).reshape(b.shape[0], *a.shape[1:]).astype(np.float32)


def merged(layer: Layer) -> Layer:
    """The layer with its adapter folded into its weight, as the deploy outputs write it
    (the layer itself, for one without an adapter)."""
    if settings(layer) is None:
        return layer
    weight = np.asarray(layer.blobs["weight"].array(), dtype=np.float32) + delta(layer)
    blobs = {role: blob for role, blob in layer.blobs.items() if role not in ROLES}
    blobs["weight"] = ParamBlob.from_tensor(torch.from_numpy(weight), trainable=True)
    params = {key: value for key, value in layer.params.items() if key != "lora"}
    return dataclasses.replace(layer, params=params, blobs=blobs)


def to_onnx(layer: Layer, writer: Any, write: Callable[[Layer, Any], None]) -> None:
    """The layer's ONNX nodes through ``write`` (its type's own writer): merged by default;
    with the writer's ``keep_adapters`` (``onnx { adapters: KEEP }``), the layer as it was
    and the adapter beside it, ``y = layer(x) + scale * B(A(x))``."""
    lora = settings(layer)
    if lora is None:
        write(layer, writer)
        return
    if not getattr(writer, "keep_adapters", False):
        write(merged(layer), writer)
        return
    base = f"{layer.name}/base"
    params = {key: value for key, value in layer.params.items() if key != "lora"}
    blobs = {role: blob for role, blob in layer.blobs.items() if role not in ROLES}
    write(dataclasses.replace(layer, params=params, blobs=blobs, outputs=[base]), writer)
    adapted = _adapter_nodes(layer, writer)
    factor = writer.const(f"{layer.name}.lora_scale", np.array(scale(lora), dtype=np.float32))
    scaled = f"{layer.name}/lora_scaled"
    writer.node("Mul", [adapted, factor], [scaled], scaled)
    writer.node("Add", [base, scaled], list(layer.outputs), f"{layer.name}/lora_add")


def _adapter_nodes(layer: Layer, writer: Any) -> str:
    """``B(A(x))`` as ONNX nodes; the name of its output."""
    a_out, b_out = f"{layer.name}/lora_A", f"{layer.name}/lora_B"
    source = layer.inputs[0]
    if layer.type == "Convolution":
        p = layer.params
        writer.node(
            "Conv", [source, writer.weight(layer, "lora_A")], [a_out], a_out, kernel_shape=list(p["kernel"]),
            strides=list(p["stride"]), pads=[*p["pad"], *p["pad"]], dilations=list(p["dilation"]),
        )  # fmt: skip
        writer.node("Conv", [a_out, writer.weight(layer, "lora_B")], [b_out], b_out)
        return b_out
    shape = writer.in_shapes(layer)[0]
    axis = layer.params.get("axis", 1) % len(shape)
    if axis != len(shape) - 1:  # Caffe flattens every axis from `axis` on
        flat = f"{layer.name}/lora_flatten"
        writer.node("Flatten", [source], [flat], flat, axis=axis)
        source = flat
    a_t = writer.weight(layer, "lora_A", np.ascontiguousarray(layer.blobs["lora_A"].array().T))
    b_t = writer.weight(layer, "lora_B", np.ascontiguousarray(layer.blobs["lora_B"].array().T))
    writer.node("MatMul", [source, a_t], [a_out], a_out)
    writer.node("MatMul", [a_out, b_t], [b_out], b_out)
    return b_out


def recipe_kwargs(layer: Layer) -> dict[str, Any]:
    """The runtime module's extra keyword arguments."""
    lora = settings(layer)
    assert lora is not None
    return {"rank": int(lora["rank"]), "scale": scale(lora), "dropout": float(lora.get("dropout", 0.0))}


__all__ = ["ROLES", "check", "delta", "merged", "recipe_kwargs", "scale", "settings", "shapes", "to_onnx"]
