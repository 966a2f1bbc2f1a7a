"""ONNX benchmark on torchvision vgg16 (random init), ratios measured side by side:

1. onnxruntime latency of surgery's ONNX file vs ``torch.onnx.export``'s file for the
   same emitted model (same session options, same input, interleaved runs);
2. file-to-file ``apply`` (ONNX source, classifier edit, ONNX output) vs ``onnx.load`` +
   ``onnx.save`` of the same file;
3. peak RSS of that ``apply`` (in a fresh process) vs the bytes of the weights;
4. surgery's ONNX write time vs ``onnx.save`` of a model holding the same initializers.

Run: ``python bench/bench_onnx.py`` (needs torchvision and onnxruntime).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import bench_memory, interleaved, print_memory_row, print_row


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_latency(workdir: Path, repeat: int) -> dict:
    import torchvision

    import surgery
    from surgery.emitters.onnx_model import emit_onnx

    torch.manual_seed(0)
    net = surgery.load(torchvision.models.vgg16(), (1, 3, 224, 224))
    ours = emit_onnx(net, workdir / "ours.onnx")
    model = surgery.to_torch(net, copy=False).eval()
    theirs = workdir / "theirs.onnx"
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, x, str(theirs), dynamo=False, opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
        )
    a, b = _session(ours), _session(theirs)
    feed_a, feed_b = {a.get_inputs()[0].name: x.numpy()}, {b.get_inputs()[0].name: x.numpy()}
    diff = float(np.abs(a.run(None, feed_a)[0] - b.run(None, feed_b)[0]).max())
    t_theirs, t_ours = interleaved(lambda: b.run(None, feed_b), lambda: a.run(None, feed_a), repeat)
    return {"torch_onnx_export_s": t_theirs, "surgery_s": t_ours, "ratio": t_ours / t_theirs, "max_abs_diff": diff}


def bench_write(workdir: Path, repeat: int) -> dict:
    import torchvision

    import surgery
    from surgery.emitters.onnx_model import build_model, emit_onnx

    torch.manual_seed(0)
    net = surgery.load(torchvision.models.vgg16(), (1, 3, 224, 224))
    reference = build_model(net)  # the same initializers, already in memory

    def save() -> None:
        onnx.save(reference, str(workdir / "plain.onnx"))

    def ours() -> None:
        emit_onnx(net, workdir / "ours.onnx")

    t_save, t_ours = interleaved(save, ours, repeat)
    return {"onnx_save_s": t_save, "emit_onnx_s": t_ours, "ratio": t_ours / t_save}


def prepare_apply(workdir: Path) -> tuple[Path, Path, int]:
    """vgg16 as an ONNX file, and a spec that edits its classifier and writes ONNX:
    the source, the spec and the weights' bytes."""
    import torchvision

    import surgery
    from surgery.emitters.onnx_model import emit_onnx

    torch.manual_seed(0)
    model = torchvision.models.vgg16()
    source = emit_onnx(surgery.load(model, (1, 3, 224, 224)), workdir / "vgg16.onnx")
    spec = workdir / "onnx_head.prototxt"
    spec.write_text(
        'source { onnx { path: "vgg16.onnx" } }\nedit { classifier { layer: "classifier.6" '
        'num_output: 10 } }\noutput { onnx { path: "model.onnx" } }\n'
    )
    return source, spec, sum(t.numel() * t.element_size() for t in model.state_dict().values())


def bench_apply(workdir: Path, source: Path, spec: Path, repeat: int) -> dict:
    """File to file: an ONNX source, a classifier edit, an ONNX output, vs onnx.load + onnx.save."""
    import surgery

    def floor() -> None:
        onnx.save(onnx.load(str(source)), str(workdir / "floor.onnx"))
        (workdir / "floor.onnx").unlink()

    def ours() -> None:
        surgery.apply(spec, workdir / "out")
        shutil.rmtree(workdir / "out")

    t_floor, t_ours = interleaved(floor, ours, repeat)
    return {"floor_s": t_floor, "apply_s": t_ours, "ratio": t_ours / t_floor}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results["latency"] = bench_latency(workdir, args.repeat)
        print_row(
            "onnxruntime vgg16: surgery's ONNX / torch.onnx.export's",
            results["latency"],
            "surgery_s",
            "torch_onnx_export_s",
        )
        source, spec, nbytes = prepare_apply(workdir)
        results["apply"] = bench_apply(workdir, source, spec, max(2, args.repeat // 2))
        print_row("apply vgg16 ONNX to ONNX / onnx.load+onnx.save", results["apply"], "apply_s", "floor_s")
        results["memory"] = bench_memory(workdir, spec, nbytes)
        print_memory_row("peak RSS of ONNX apply above imports / weights bytes", results["memory"])
        results["write"] = bench_write(workdir, max(2, args.repeat // 2))
        print_row(
            "write vgg16 ONNX: emit_onnx (build+check+save) / onnx.save", results["write"], "emit_onnx_s", "onnx_save_s"
        )
    return results


if __name__ == "__main__":
    main()
