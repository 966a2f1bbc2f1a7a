"""A Hugging Face transformers model, whole process: `surgery apply` of an `hf { path }`
source (import through torch.export, then model.py + weights.pt + model.onnx + report)
vs what users run without surgery (transformers' `from_pretrained`, then
`torch.onnx.export`), and each process's peak memory vs the weights' bytes.

The model is ViT-B/16 sized (86 M parameters, 224x224), built from its config with random
weights and written by `save_pretrained` into a temporary folder (no download). Each side
runs in its own fresh Python process, alternately, `--rounds` times; the ratio is of the
medians. Peak memory is the process's maximum resident set (ru_maxrss) above that of a
process that only imports the libraries (torch, transformers, surgery, onnx).

Run: ``python bench/bench_hf.py`` (needs transformers and onnxscript; 3-6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

_MEASURE = textwrap.dedent(
    """
    import resource, runpy, sys, time
    start = time.perf_counter()
    sys.argv = sys.argv[1:]
    {body}
    elapsed = time.perf_counter() - start
    print("MEASURED", elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
    """
)

_IMPORTS = "import torch, transformers, surgery.cli, onnx"
_SURGERY = "from surgery.cli import main; code = main(['apply', sys.argv[0], '-o', sys.argv[1], '--force'])"
_TRANSFORMERS = (
    "import torch, transformers; "
    "model = transformers.AutoModelForImageClassification.from_pretrained(sys.argv[0], use_kernels=False).eval(); "
    "torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), sys.argv[1], input_names=['pixel_values'], "
    "dynamic_shapes=({0: torch.export.Dim('batch')},), verbose=False)"
)


def _run(body: str, *args: str) -> tuple[float, int]:
    script = _MEASURE.format(body=body)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEASURED")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    _, seconds, peak = lines[-1].split()
    return float(seconds), int(peak)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vit-b16"
        config = transformers.ViTConfig(num_labels=1000)  # ViT-B/16: 12 layers, 768 wide, 224x224
        torch.manual_seed(0)
        model = transformers.AutoModelForImageClassification.from_config(config)
        model.save_pretrained(folder)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        spec = Path(tmp) / "spec.prototxt"
        spec.write_text('source { hf { path: "vit-b16" } }\n')
        ours, theirs = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            ours.append((_run(_SURGERY, str(spec), str(Path(tmp) / "out")), time.perf_counter() - start))
            start = time.perf_counter()
            measured = _run(_TRANSFORMERS, str(folder), str(Path(tmp) / "theirs.onnx"))
            theirs.append((measured, time.perf_counter() - start))
        floor = _run(_IMPORTS)[1]  # the libraries themselves, before any model
        ours_s = statistics.median(whole for _, whole in ours)
        theirs_s = statistics.median(whole for _, whole in theirs)
        ours_peak = max(peak for (_, peak), _ in ours)
        theirs_peak = max(peak for (_, peak), _ in theirs)
        print(
            f"{'HF ViT-B/16: surgery apply vs from_pretrained + onnx.export':<60} {ours_s / theirs_s:6.2f}x  "
            f"({ours_s:.1f} s vs {theirs_s:.1f} s, whole process)",
            flush=True,
        )
        print(
            f"{'HF ViT-B/16: peak memory above the imports vs weights':<60} {(ours_peak - floor) / weights:6.2f}x  "
            f"({(ours_peak - floor) / 2**20:.0f} MiB; theirs {(theirs_peak - floor) / weights:.2f}x; weights "
            f"{weights / 2**20:.0f} MiB; the imports alone {floor / 2**20:.0f} MiB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
