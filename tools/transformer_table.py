"""Measure which of today's vision models surgery reads, and print the README's table.

For each family (small configs, seeded random weights, nothing downloaded): the
transformers model as an ``hf { path }`` source (save_pretrained into a temporary folder),
and its ONNX files from torch's two exporters (dynamo, the default, with the example's
batch of 2 fixed, and TorchScript, ``dynamo=False``, with a dynamic batch) as ``onnx``
sources, each checked against its reference (transformers' forward; onnxruntime on the
file) within 1e-5 of the output's scale, then built at batch 1; and onnx2torch on the
dynamo file, beside it.

    python tools/transformer_table.py     # about 2 minutes on 2 cores

Each cell is ``ok`` or the first words of why not.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _configs() -> dict[str, object]:
    from hf_models import small_configs

    names = {"vit": "ViT", "dinov2": "DINOv2", "convnext": "ConvNeXt", "swin": "Swin", "resnet": "ResNet"}
    names["mobilenet_v2"] = "MobileNetV2"
    return {names[family]: config for family, config in small_configs().items()}


def _why(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return (first[:90] + "...") if len(first) > 90 else first


def _close(got: np.ndarray, want: np.ndarray) -> str:
    error = float(np.abs(got - want).max())
    scale = float(np.abs(want).max()) or 1.0
    return "ok" if error <= 1e-5 * scale else f"wrong: max error {error / scale:.1e} of scale"


def _ours_torch(net, x: np.ndarray) -> np.ndarray:
    import surgery

    with torch.no_grad():
        return surgery.to_torch(net).eval()(torch.from_numpy(x)).numpy()


def _hf_cell(folder: Path, x: np.ndarray, want: np.ndarray) -> str:
    import surgery

    spec = folder.parent / "hf.prototxt"
    spec.write_text('source { hf { path: "model" } input_shape: [1, 3, 32, 32] }\n')
    try:
        return _close(_ours_torch(surgery.plan(spec, shapes_only=False).net, x), want)
    except Exception as error:  # noqa: BLE001  (the table reports it)
        return f"refused: {_why(error)}"


def _onnx_cell(path: Path, x: np.ndarray) -> str:
    """Read at the file's own shape (its batch, 2) and compared with onnxruntime; then
    built at batch 1, as a spec with another input_shape would."""
    import onnxruntime as ort

    from surgery.importers.onnx_model import import_onnx

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    try:
        verdict = _close(_ours_torch(import_onnx(path), x), want)
    except Exception as error:  # noqa: BLE001
        return f"refused: {_why(error)}"
    try:
        import_onnx(path, input_shape=(1, 3, 32, 32))
    except Exception as error:  # noqa: BLE001
        return f"{verdict} at the export's batch only ({_why(error)})"
    return verdict


def _onnx2torch_cell(path: Path, x: np.ndarray) -> str:
    import onnxruntime as ort

    try:
        from onnx2torch import convert
    except ImportError:
        return "not installed"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    try:
        with torch.no_grad():
            got = convert(str(path))(torch.from_numpy(x))
        return _close(np.asarray(got.detach() if isinstance(got, torch.Tensor) else got[0]), want)
    except Exception as error:  # noqa: BLE001
        return f"fails: {_why(error)}"


def _export(model: torch.nn.Module, path: Path, dynamo: bool) -> str | None:
    x = torch.zeros(2, 3, 32, 32)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                torch.onnx.export(model, (x,), path, input_names=["pixel_values"], dynamo=True, verbose=False)
            else:
                torch.onnx.export(
                    model, (x,), path, input_names=["pixel_values"], dynamo=False, opset_version=17,
                    dynamic_axes={"pixel_values": {0: "batch"}},
                )  # fmt: skip
    except Exception as error:  # noqa: BLE001
        return f"export failed: {_why(error)}"
    return None


def main() -> None:
    import transformers
    from hf_models import Logits

    rows = ["| model family | transformers source | dynamo ONNX | TorchScript ONNX | onnx2torch on dynamo ONNX |"]
    rows.append("|---|---|---|---|---|")
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    for family, config in _configs().items():
        torch.manual_seed(0)
        model = transformers.AutoModelForImageClassification.from_config(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            model.save_pretrained(folder)
            with torch.no_grad():
                want = model(torch.from_numpy(x)).logits.numpy()
            cells = [_hf_cell(folder, x, want)]
            dynamo_file = Path(tmp) / "dynamo.onnx"
            for dynamo, path in ((True, dynamo_file), (False, Path(tmp) / "script.onnx")):
                failed = _export(Logits(model), path, dynamo)
                cells.append(failed or _onnx_cell(path, x))
            cells.append(_onnx2torch_cell(dynamo_file, x) if dynamo_file.exists() else "-")
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
