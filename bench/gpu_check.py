"""The GPU check: what a user with a CUDA machine relies on, in one table, in minutes.

For every spec in ``specs/`` and a torchvision resnet50 with a new 10-way head (trunk
frozen), it prints one row of:

- ``verify``: the spec's verify on the GPU (torch on ``cuda`` at fp32, onnxruntime's
  CUDA provider with TF32 off when onnxruntime-gpu is installed): worst max rel;
- ``cuda/cpu``: the emitted torch model on the GPU vs on the CPU (both fp32, TF32 off),
  max rel against the CPU's output scale;
- ``sgd``: five SGD steps on the GPU with ``model.param_groups(...)``: every frozen
  parameter and every frozen BatchNorm's statistics bit-identical, every new layer moved;
- ``fp32`` / ``bf16`` / ``channels_last``: the emitted model's forward time over the
  original's (the source model emitted as is; torchvision's own module for resnet50),
  median of interleaved rounds, as a ratio (informative: tiny nets time launch overhead).

It exits 1 when a verify, a cuda/cpu comparison or an sgd check fails. Without CUDA it
says so and exits 0. ``--device cpu`` runs the same checks on the CPU (CI runs it that
way with ``--quick``, so the script itself stays working)::

    python bench/gpu_check.py            # on a CUDA machine, under 3 minutes on one H200
    python bench/gpu_check.py --device cpu --quick --only digits_parity
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from surgery import api  # noqa: E402
from surgery.emitters.torch_module import emit_torch  # noqa: E402
from surgery.importers.sources import load_source  # noqa: E402
from surgery.ir import Net  # noqa: E402
from surgery.layers.runtime import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d  # noqa: E402
from surgery.spec import load_spec  # noqa: E402
from surgery.verify import Tolerance, compare, full_fp32, verify  # noqa: E402


@dataclass
class Case:
    """One row: the source net, the edited net, and the module to time against."""

    name: str
    source: Net
    edited: Net
    original: torch.nn.Module
    opset: int = 17


def spec_case(spec: Path) -> Case:
    loaded = load_spec(spec)
    message = loaded.message
    source = load_source(message.source, loaded.base_dir, name=message.name or None, seed=message.seed)
    planned = api.plan(spec, shapes_only=False, source=source)
    opset = message.output.onnx.opset if message.output.onnx.HasField("opset") else 17
    return Case(spec.stem, source, planned.net, emit_torch(source), opset)


def resnet50_case(size: int) -> Case:
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet50().eval()
    source = api.load(module, (1, 3, size, size))
    edited = api.load(module, (1, 3, size, size))
    api.classifier(edited, "fc", num_output=10, seed=7)
    api.lr(edited, up_to="avgpool", lr_mult=0)
    return Case("resnet50 (new 10-way head)", source, edited, module)


def _inputs(net: Net, batch: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, *layer.params["shape"][1:], generator=generator).to(device) for layer in net.input_layers()
    ]


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _tensors(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in _tensors(value)]
    return []


def check_verify(case: Case, device: torch.device) -> tuple[bool, str]:
    result = verify(case.source, case.edited, device=str(device), opset=case.opset)
    worst = max((c.max_rel for c in result.comparisons), default=0.0)
    return result.ok, f"{worst:.1e} {result.provider.split('ExecutionProvider')[0]}"


def check_cuda_vs_cpu(case: Case, device: torch.device) -> tuple[bool, str]:
    model = emit_torch(case.edited).eval()
    inputs = _inputs(case.edited, 2, torch.device("cpu"))
    with torch.no_grad(), full_fp32():
        cpu = _tensors(model(*inputs))
        gpu = _tensors(model.to(device)(*[x.to(device) for x in inputs]))
    comparisons = [
        compare("cuda vs cpu", str(i), g.cpu().numpy(), c.numpy(), Tolerance())
        for i, (g, c) in enumerate(zip(gpu, cpu))
    ]
    return all(c.ok for c in comparisons), f"{max(c.max_rel for c in comparisons):.1e}"


#: FP16's 11 significant bits through a deep net: the output's max relative difference allowed.
FP16_RTOL = 1e-2


def check_fp16(case: Case, device: torch.device) -> tuple[bool, str]:
    """The FP16 deploy file (``precision: FP16``) on onnxruntime's CUDA provider (the CPU
    one with --device cpu) against the float32 file on the CPU, at FP16 tolerance."""
    import onnxruntime as ort

    from surgery.emitters.onnx_model import build_model
    from surgery.emitters.onnx_precision import to_fp16

    fp32 = build_model(case.edited, opset=case.opset)
    half = to_fp16(fp32)
    cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    low = ort.InferenceSession(half.SerializeToString(), providers=providers)
    high = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {x.name: t.numpy() for x, t in zip(high.get_inputs(), _inputs(case.edited, 2, torch.device("cpu")))}
    a, b = high.run(None, feed)[0], low.run(None, feed)[0].astype(np.float32)
    rel = float(np.abs(a - b).max() / (np.abs(a).max() or 1.0))
    return rel <= FP16_RTOL, f"{rel:.1e} {low.get_providers()[0].split('ExecutionProvider')[0]}"


def check_sgd(case: Case, device: torch.device, batch: int) -> tuple[bool, str]:
    """Five SGD steps with the param groups: frozen bits stay, new layers move."""
    model = emit_torch(case.edited).to(device).train()
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    groups = model.param_groups(lr=0.01, weight_decay=5e-4)
    if not groups:
        return True, "nothing trains"
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    inputs = _inputs(case.edited, batch, device, seed=1)
    for _ in range(5):
        optimizer.zero_grad()
        loss = sum(t.float().pow(2).mean() for t in _tensors(model(*inputs)))
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    for path, module in model.named_modules():
        if isinstance(module, (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d)):
            frozen += [f"{path}.{name}" for name, _ in module.named_buffers()]
    changed = [name for name in frozen if not torch.equal(before[name], after[name])]
    new = [
        name
        for layer in case.edited.layers()
        for role, blob in layer.blobs.items()
        if blob.origin.kind == "filler" and blob.trainable and not blob.frozen
        for name in [_param_name(model, layer.name, role)]
        if name
    ]
    still = [name for name in new if torch.equal(before[name], after[name])]
    ok = not changed and not still
    return ok, f"{len(frozen)} frozen same, {len(new) - len(still)}/{len(new)} new moved" + (
        f"; CHANGED {changed[:3]}" if changed else ""
    ) + (f"; STILL {still[:3]}" if still else "")


def _param_name(model: torch.nn.Module, layer: str, role: str) -> str | None:
    path = model.MODULE_PATHS.get(layer, layer)
    name = f"{path}.{role}"
    return name if name in dict(model.named_parameters()) else None


def time_ratio(case: Case, device: torch.device, batch: int, mode: str, rounds: int) -> float:
    """Median over interleaved rounds of emitted / original forward time."""
    ours, theirs = emit_torch(case.edited).to(device).eval(), case.original.to(device).eval()
    inputs = {ours: _inputs(case.edited, batch, device), theirs: _inputs(case.source, batch * _frames(case), device)}
    if mode == "channels_last":
        if any(x.dim() != 4 for x in inputs[theirs]):
            return float("nan")
        ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
        inputs = {
            model: [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in values]
            for model, values in inputs.items()
        }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16")

    def run(model: torch.nn.Module) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            model(*inputs[model])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(3):
        run(ours), run(theirs)
    ratios = []
    for index in range(rounds):
        pair = (run(ours), run(theirs)) if index % 2 else tuple(reversed((run(theirs), run(ours))))
        ratios.append(pair[0] / pair[1])
    return statistics.median(ratios)


def _frames(case: Case) -> int:
    """Frames per clip when the edited net is a clip model of an image net (the original
    then runs on every frame of the batch), else 1."""
    ours, theirs = case.edited.input_layers()[0].params["shape"], case.source.input_layers()[0].params["shape"]
    return ours[1] if len(ours) == len(theirs) + 1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the same checks)")
    parser.add_argument("--quick", action="store_true", help="small batches, few rounds, resnet50 at 64x64")
    parser.add_argument("--only", action="append", help="only these cases (spec stems, or resnet50)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; nothing to check here (run it on a CUDA machine)")
        return 0
    device = torch.device(args.device)
    batch, rounds, size = (4, 3, 64) if args.quick else (64, 15, 224)
    specs = sorted(p for p in (ROOT / "specs").iterdir() if p.suffix in (".prototxt", ".yaml", ".yml", ".json"))
    builders = [(p.stem, lambda p=p: spec_case(p)) for p in specs] + [("resnet50", lambda: resnet50_case(size))]
    header = (
        f"{'case':<28} {'verify':<18} {'cuda/cpu':<9} {'sgd':<34} {'onnx fp16':<14} {'fp32':>6} {'bf16':>6} "
        f"{'ch_last':>7}"
    )
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}\n{header}"
    )
    failed = []
    start = time.perf_counter()
    for name, build in builders:
        if args.only and name not in args.only:
            continue
        case = build()
        checks = [
            check_verify(case, device),
            check_cuda_vs_cpu(case, device),
            check_sgd(case, device, batch),
            check_fp16(case, device),
        ]
        times = [time_ratio(case, device, batch, mode, rounds) for mode in ("fp32", "bf16", "channels_last")]
        marks = ["" if ok else "FAIL " for ok, _ in checks]
        print(
            f"{case.name[:28]:<28} {marks[0] + checks[0][1]:<18} {marks[1] + checks[1][1]:<9} "
            f"{marks[2] + checks[2][1]:<34} {marks[3] + checks[3][1]:<14} " + " ".join(f"{t:>6.2f}x" for t in times),
            flush=True,
        )
        if not all(ok for ok, _ in checks):
            failed.append(case.name)
    print(
        f"{len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
        + f" ({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
