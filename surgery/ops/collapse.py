"""``collapse``: two convolutions into one new, named layer.

- ``EXACT``: compose the kernels (``surgery.math.conv_compose``). Exact when nothing sits
  between and the second convolution has no padding; with padding the border outputs
  differ, which is measured and must be accepted (``accept_border``).
- ``FIT``: least-squares fit of one convolution to the pair, on calibration inputs (a
  nonlinearity may sit between); the report gives the relative error on held-out inputs.
- ``FRESH``: a new convolution of the requested size with filler weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from surgery.errors import SpecError
from surgery.ir import Layer, Net, Origin, ParamBlob
from surgery.ir.blob import Inputs
from surgery.ir.budget import check_bytes
from surgery.layers.convolution import conv_output_size, conv_params
from surgery.layers.new_blobs import init_new_blobs
from surgery.lazy_torch import F, torch
from surgery.math.conv_compose import compose_weights, composed_geometry, fit_conv, relative_error
from surgery.math.fillers import Filler
from surgery.math.seeding import seeded
from surgery.ops.base import ADDED, DROPPED, Action, OpContext, register_op

_MODES = {0: "EXACT", 1: "FIT", 2: "FRESH"}


def _between(net: Net, first: Layer, second: Layer) -> list[Layer]:
    """The single-file chain of layers from ``first``'s output to ``second``'s input."""
    chain: list[Layer] = []
    blob = first.outputs[0]
    while True:
        readers = net.consumers(blob)
        if len(readers) != 1 or blob in net.outputs:
            raise SpecError(
                f"{net.producer(blob).name!r}'s output has other readers: the pair is not a chain",
                subject=first.name,
                fix="collapse two convolutions where one feeds only the other",
            )
        reader = readers[0][0]
        if reader.name == second.name:
            return chain
        if len(reader.inputs) != 1 or len(reader.outputs) != 1 or len(chain) > 8:
            raise SpecError(
                f"{second.name!r} is not reached from {first.name!r} by a simple chain", subject=second.name
            )
        chain.append(reader)
        blob = reader.outputs[0]


def _check(net: Net, op: Any) -> tuple[Layer, Layer, list[Layer]]:
    if not (op.first and op.second and op.name):
        raise SpecError(
            "collapse needs first, second and name", fix='e.g. first: "conv1" second: "conv2" name: "conv12"'
        )
    first, second = net.layer(op.first), net.layer(op.second)
    for layer in (first, second):
        if layer.type != "Convolution":
            raise SpecError(f"{layer.name!r} is a {layer.type}, not a Convolution", subject=layer.name)
        if len(layer.params["kernel"]) != 2:
            raise SpecError(
                f"{layer.name!r} is a {len(layer.params['kernel'])}-D convolution; collapse composes 2-D ones",
                subject=layer.name,
            )
        if layer.params["group"] != 1:
            raise SpecError(
                f"{layer.name!r} is a grouped convolution; collapse composes groups of 1", subject=layer.name
            )
        if layer.per_frame:  # its shapes carry the clip's time axis, its calibration runs on clips
            raise SpecError(
                f"{layer.name!r} runs per frame of a clip model; collapse rewrites the image net",
                subject=layer.name,
                fix="put the collapse before the `sequence` edit",
            )
    if op.name in net and op.name not in (op.first, op.second):
        raise SpecError(f"a layer named {op.name!r} already exists", subject=op.name)
    return first, second, _between(net, first, second)


def _geometry(first: Layer, second: Layer) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    p1, p2 = first.params, second.params
    parts = [
        composed_geometry(
            p1["kernel"][i],
            p1["stride"][i],
            p1["dilation"][i],
            p1["pad"][i],
            p2["kernel"][i],
            p2["stride"][i],
            p2["dilation"][i],
            p2["pad"][i],
        )
        for i in range(2)
    ]
    (k0, s0, p0), (k1, s1, p1_) = parts[0], parts[1]
    return (k0, k1), (s0, s1), (p0, p1_)


def _replace_pair(net: Net, first: Layer, second: Layer, chain: list[Layer], name: str, params: dict) -> Layer:
    source, target = first.inputs[0], second.outputs[0]
    layer = Layer(name, "Convolution", inputs=[source], outputs=[name], params=params)
    outputs_before = net.outputs
    readers = [(r.name, i) for r, i in net.consumers(target)]
    for reader, index in readers:
        net.set_input(reader, index, source)  # park them on the source while the pair goes
    for old in (second, *reversed(chain), first):
        net.remove_layer(old.name)
    net.add_layer(layer)
    for reader, index in readers:
        net.set_input(reader, index, layer.outputs[0])
    net.set_outputs([layer.outputs[0] if b == target else b for b in outputs_before])
    return layer


def _random_inputs(net: Net, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` seeded standard-normal samples of the net's input."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, *net.input_layers()[0].params["shape"][1:])
    return [torch.randn(*shape, generator=generator)]


def _calibration(net: Net, path: Path) -> torch.Tensor:
    """The user's calibration inputs: a .npy array of input samples (N, C, H, W)."""
    try:
        array = np.load(path)
    except (OSError, ValueError) as error:
        raise SpecError(f"cannot read calibration inputs {str(path)!r}: {error}", subject=path.name) from None
    expected = tuple(net.input_layers()[0].params["shape"][1:])
    if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != expected:
        raise SpecError(
            f"calibration inputs {str(path)!r} have shape {array.shape}; the net's input is "
            f"(N, {', '.join(map(str, expected))})",
            subject=path.name,
            fix="save an array of input samples, batch axis first",
        )
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _fit_and_held_out(net: Net, op: Any, ctx: OpContext) -> tuple[list[torch.Tensor], list[torch.Tensor], str]:
    """Inputs to fit on, inputs to measure the fit on, and what the latter are."""
    if not op.calibration:
        held = max(2, op.samples // 2)
        return _random_inputs(net, op.samples, ctx.seed), _random_inputs(net, held, ctx.seed + 1), "held-out inputs"
    samples = _calibration(net, (ctx.base_dir or Path.cwd()) / op.calibration)
    if len(samples) < 4:  # too few to hold some out: say so rather than call them held out
        return [samples], [samples], "the calibration inputs"
    split = len(samples) - len(samples) // 4
    return [samples[:split]], [samples[split:]], f"{len(samples) - split} held-out calibration inputs"


def _check_fit(net: Net, op: Any, first: Layer, second: Layer, kernel, stride, pad) -> None:
    """What a fit can be refused for from shapes alone: no samples, a kernel whose
    output does not line up with the pair's, more memory than the machine has."""
    if not op.calibration and op.samples < 1:
        raise SpecError(
            f"samples must be at least 1, got {op.samples}",
            subject=op.name,
            fix="fit on e.g. samples: 8 seeded random inputs, or give calibration inputs",
        )
    source, target = net.known_shape(first.inputs[0]), net.known_shape(second.outputs[0])
    out = tuple(conv_output_size(source[2 + i], kernel[i], stride[i], pad[i], 1) for i in range(2))
    if out != tuple(target[2:]):
        raise SpecError(
            f"a {kernel[0]}x{kernel[1]} convolution (stride {stride[0]}, pad {pad[0]}) on "
            f"{first.name!r}'s input {source} gives {out[0]}x{out[1]}, the pair gives "
            f"{target[2]}x{target[3]}",
            subject=op.name,
            fix="use an odd kernel_size (its padding keeps the size), or the pair's own (omit it)",
        )
    if op.calibration:
        return
    features = source[1] * kernel[0] * kernel[1] + 1
    positions = op.samples * out[0] * out[1]
    per_sample = sum(
        math.prod(s[1:])
        for b, s in net.shapes().items()
        if s and net.producer(b).name in net.ancestors(second.name) | {second.name}
    )
    estimate = 8 * positions * (2 * features + target[1]) + 4 * 2 * op.samples * per_sample
    check_bytes(f"fitting {op.name!r} on {op.samples} samples", estimate, subject=op.name, fix="use fewer samples")


def _fit(net: Net, op: Any, first: Layer, second: Layer, kernel, stride, pad, ctx: OpContext) -> tuple:
    from surgery.probe import blob_values

    wanted = [first.inputs[0], second.outputs[0]]
    fit_on, measure_on, measured = _fit_and_held_out(net, op, ctx)
    with seeded(ctx.seed):  # whatever draws from the global generators (a stochastic layer) repeats
        train, held = blob_values(net, wanted, fit_on), blob_values(net, wanted, measure_on)
        weight, bias = fit_conv(train[wanted[0]], train[wanted[1]], kernel, stride, pad)
    estimate = F.conv2d(held[wanted[0]], weight, bias, stride=stride, padding=pad)
    if estimate.shape != held[wanted[1]].shape:
        raise SpecError(
            f"a {kernel} convolution with stride {stride} cannot reproduce {second.name!r}'s output "
            f"shape {tuple(held[wanted[1]].shape)}",
            subject=op.name,
        )
    return weight, bias, relative_error(estimate, held[wanted[1]]), measured


@register_op("collapse")
def collapse(net: Net, op: Any, ctx: OpContext) -> list[Action]:
    """Replace the pair ``op.first`` -> ``op.second`` by one convolution ``op.name``."""
    first, second, chain = _check(net, op)
    mode = _MODES[op.mode]
    kernel, stride, pad = _geometry(first, second)
    if op.kernel_size and mode != "EXACT":
        kernel = (op.kernel_size, op.kernel_size)
        pad = ((kernel[0] - 1) // 2 if stride[0] == 1 else pad[0], (kernel[1] - 1) // 2 if stride[1] == 1 else pad[1])
    detail = ""
    if mode == "EXACT":
        if chain:
            raise SpecError(
                f"{chain[0].name!r} ({chain[0].type}) sits between {first.name!r} and {second.name!r}: "
                "the pair is not linear",
                subject=first.name,
                fix="use mode: FIT (least squares) or FRESH, or fold/remove that layer first",
            )
        p2 = second.params
        composed = _composed(first, second)
        if any(p2["pad"]) and ctx.shapes_only:  # measuring needs weights: apply does it
            border = float("nan") if op.accept_border else 0.0
        else:
            border = _border_error(net, first, second, *composed(), stride, pad, ctx) if any(p2["pad"]) else 0.0
        if border and not op.accept_border:
            raise SpecError(
                f"{second.name!r} pads its input, so the composite differs at the borders (interior exact, max "
                f"border deviation {border:.3g} on a probe input)",
                subject=op.name,
                fix="add accept_border: true to accept it, or use mode: FIT",
            )
        detail = "exact composition" + (f"; interior exact, max border deviation {border:.3g}" if border else "")
        if any(p2["pad"]) and ctx.shapes_only:
            detail = "exact composition; the border deviation is measured at apply"
        origin = Origin("derived", f"composed from {first.name} and {second.name}")
    elif mode == "FIT":
        _check_fit(net, op, first, second, kernel, stride, pad)
        if ctx.shapes_only:  # plan reads no weights: the fit itself runs at apply
            composed = _fitted_at_apply
            detail = (
                f"least-squares fit on {_what_inputs(op)} happens at apply (plan reads no weights); "
                "apply reports its relative error"
            )
        else:
            weight, bias, error, measured = _fit(net, op, first, second, kernel, stride, pad, ctx)
            composed = functools.partial(_given, weight, bias)
            detail = f"least-squares fit, relative error {error:.4f} on {measured}"
        origin = Origin("derived", f"fitted to {first.name} -> {second.name} ({detail})")
    params = conv_params(second.params["num_output"], kernel, stride, pad)
    out_channels, in_channels = second.params["num_output"], first.blobs["weight"].shape[1]
    removed = [first.name, *(c.name for c in chain), second.name]
    layer = _replace_pair(net, first, second, chain, op.name, params)
    if mode == "FRESH":
        fillers = {"weight": Filler.from_proto(op.weight_filler)} if op.HasField("weight_filler") else {}
        detail = "fresh: " + "; ".join(init_new_blobs(net, layer, ctx.seed, fillers))
    else:
        dtype = first.blobs["weight"].dtype_name
        layer.blobs = {
            "weight": ParamBlob.lazy((out_channels, in_channels, *kernel), dtype, lambda: composed()[0], origin=origin),
            "bias": ParamBlob.lazy((out_channels,), dtype, lambda: composed()[1], origin=origin),
        }
    net.shapes()
    return [
        Action(
            "collapse",
            op.name,
            ADDED,
            f"{kernel[0]}x{kernel[1]} stride {stride[0]} from {' + '.join(removed)}: {detail}",
        )
    ] + [Action("collapse", name, DROPPED, f"collapsed into {op.name}") for name in removed]


def _composed(first: Layer, second: Layer) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The exact composite's (weight, bias), computed once on first use from the pair's
    blobs as they are now (plan reads no weights)."""
    inputs = Inputs(first=first.blobs, second=second.blobs)
    p1, p2 = dict(first.params), dict(second.params)

    @functools.cache
    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return compose_weights(
            inputs.required("first.weight"),
            inputs.data("first.bias"),
            inputs.required("second.weight"),
            inputs.data("second.bias"),
            p1["stride"],
            p1["dilation"],
            p2["dilation"],
        )

    return compute


def _given(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return weight, bias


def _fitted_at_apply() -> tuple[torch.Tensor, torch.Tensor]:
    raise RuntimeError("a planned least-squares fit has no values: apply runs the fit")


def _what_inputs(op: Any) -> str:
    return f"calibration inputs {op.calibration!r}" if op.calibration else f"{op.samples} seeded random inputs"


def _border_error(net: Net, first: Layer, second: Layer, weight, bias, stride, pad, ctx: OpContext) -> float:
    from surgery.probe import blob_values

    values = blob_values(net, [first.inputs[0], second.outputs[0]], _random_inputs(net, 2, ctx.seed))
    estimate = F.conv2d(values[first.inputs[0]], weight, bias, stride=stride, padding=pad)
    return float((estimate - values[second.outputs[0]]).abs().max())
