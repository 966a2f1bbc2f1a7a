"""Hostile model files against the CLI: each attack made small in a temporary folder, run as
``surgery ...`` in a fresh process, and reported as a table row: exit code, whether a
traceback was printed, whether the host file's bytes reached any output, wall time and peak
memory (``/usr/bin/time``). The fixtures come from ``tests/untrusted_files.py``.

    python tools/attack_table.py            # the whole table (a few minutes: 100,000 layers)
    python tools/attack_table.py --quick    # without the two largest report pages
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from onnx import TensorProto, helper  # noqa: E402
from untrusted_files import (  # noqa: E402
    SECRET,
    constant_add,
    endless_loop,
    external_tensor,
    keras_config,
    onnx_model,
    outer_product,
    save_onnx,
    write_keras_h5,
    write_secret,
    write_secret_h5,
)

Attack = Callable[[Path], tuple[list[str], dict[str, str]]]


def _spec(folder: Path, source: str) -> Path:
    (folder / "spec.prototxt").write_text(f"source {{ {source} }}\n")
    return folder / "spec.prototxt"


def _models(root: Path) -> Path:
    (root / "models").mkdir()
    write_secret(root / "secret.bin")
    write_secret_h5(root / "secret.h5")
    return root / "models"


def h5(kind: str, target: str) -> Attack:
    def make(root: Path):
        models = _models(root)
        write_keras_h5(models / "m.h5", kind, str(root / target) if target.startswith("/") else target)
        return ["apply", str(_spec(models, 'keras { path: "m.h5" }')), "-o", str(root / "out")], {}

    return make


def onnx_external(location: str, holder=constant_add) -> Attack:
    def make(root: Path):
        models = _models(root)
        where = str(root / "secret.bin") if location == "ABS" else location
        if location == "fifo":
            os.mkfifo(models / "fifo")
        save_onnx(
            holder(external_tensor("c" if holder is constant_add else "w", {"location": where})), models / "m.onnx"
        )
        return ["apply", str(_spec(models, 'onnx { path: "m.onnx" }')), "-o", str(root / "out")], {}

    return make


def caffe_mean(name: str) -> Attack:
    def make(root: Path):
        models = _models(root)
        if name == "fifo":
            os.mkfifo(models / "fifo")
        target = str(root / "secret.bin") if name == "ABS" else name
        (models / "n.prototxt").write_text(
            'name: "n"\nlayer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }\n'
            '  transform_param { crop_size: 4 } data_param { source: "x" batch_size: 1 } }\n'
            'layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }\n'
            f'  transform_param {{ crop_size: 4 mean_file: "{target}" }} '
            'data_param { source: "x" batch_size: 1 } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            "convolution_param { num_output: 2 kernel_size: 1 } }\n"
        )
        return ["apply", str(_spec(models, 'caffe { prototxt: "n.prototxt" }')), "-o", str(root / "out")], {}

    return make


def loop(root: Path):
    save_onnx(endless_loop(), root / "m.onnx")
    return ["inspect", str(root / "m.onnx")], {}


def broadcast(root: Path):
    save_onnx(outer_product(20000), root / "m.onnx")
    return ["inspect", str(root / "m.onnx")], {"SURGERY_MEMORY_BUDGET": "100000000"}


def keras_bomb(member: str) -> Attack:
    def make(root: Path):
        config = json.dumps(keras_config()).encode()
        big = config + b" " * (2 << 30)
        with zipfile.ZipFile(root / "m.keras", "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("config.json", big if member == "config.json" else config)
            archive.writestr("metadata.json", big if member == "metadata.json" else b"{}")
            archive.write(write_keras_h5(root / "w.h5"), "model.weights.h5")
        return ["inspect", str(root / "m.keras")], {}

    return make


def gzip_kernel(root: Path):
    write_keras_h5(root / "m.h5", "gzip", units=16384, features=16384)  # 1 GiB of zeros
    return ["apply", str(_spec(root, 'keras { path: "m.h5" }')), "-o", str(root / "out")], {
        "SURGERY_MEMORY_BUDGET": "500000000"
    }


def fifo(what: str) -> Attack:
    def make(root: Path):
        os.mkfifo(root / "x")
        if what == "model":
            return ["inspect", str(root / "x")], {}
        return ["plan", str(root / "x")], {}

    return make


def dev_zero(root: Path):
    return ["plan", "/dev/zero"], {}


def wide(count: int) -> Attack:
    def make(root: Path):
        nodes = [helper.make_node("Relu", ["x"], [f"r{i}"], name=f"r{i}") for i in range(count)]
        nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(count)], ["y"], name="sum"))
        save_onnx(onnx_model(nodes), root / "m.onnx")
        spec = root / "spec.prototxt"
        spec.write_text('source { onnx { path: "m.onnx" } }\noutput { onnx { } }\n')
        return ["apply", str(spec), "-o", str(root / "out")], {}

    return make


def factory(root: Path):
    spec = root / "spec.prototxt"
    spec.write_text(
        f'source {{ torch {{ factory: "os:system" kwargs: \'{{"command": "touch {root}/ran"}}\' }} '
        "input_shape: [1, 3, 8, 8] }\n"
    )
    return ["plan", str(spec)], {}


ATTACKS: list[tuple[str, Attack]] = [
    ("1 h5 external raw storage (absolute)", h5("external", "/secret.bin")),
    ("1 h5 external raw storage (relative)", h5("external", "../secret.bin")),
    ("1 h5 external link", h5("link", "/secret.h5")),
    ("1 h5 virtual dataset", h5("vds", "/secret.h5")),
    ("2 onnx Constant external data in cwd", onnx_external("secret.bin")),
    ("2 onnx Constant external data ..", onnx_external("../secret.bin")),
    ("2 onnx Constant external data absolute", onnx_external("ABS")),
    ("2 onnx initializer external data FIFO", onnx_external("fifo", holder=lambda t: _initializer(t))),
    ("3 caffe mean_file absolute", caffe_mean("ABS")),
    ("3 caffe mean_file ..", caffe_mean("../secret.bin")),
    ("3 caffe mean_file /dev/zero", caffe_mean("/dev/zero")),
    ("3 caffe mean_file FIFO", caffe_mean("fifo")),
    ("4 folding: Loop of 2**62", loop),
    ("4 folding: broadcast Mul to 1.6 GB, budget 100 MB", broadcast),
    ("5 .keras config.json inflating to 2 GB", keras_bomb("config.json")),
    ("5 .keras metadata.json inflating to 2 GB", keras_bomb("metadata.json")),
    ("5 gzip HDF5 kernel of 1 GiB, budget 500 MB", gzip_kernel),
    ("6 FIFO as the model", fifo("model")),
    ("6 FIFO as the spec", fifo("spec")),
    ("8 plan /dev/zero", dev_zero),
    ("7 report.html, 5,000 parallel layers", wide(5000)),
    ("7 report.html, 10,000 parallel layers", wide(10000)),
    ("7 report.html, 100,000 parallel layers", wide(100000)),
    ("10 factory os:system in a spec", factory),
]


def _initializer(tensor: TensorProto):
    from untrusted_files import initializer_add

    tensor.name = "w"
    return initializer_add(tensor)


def _leaked(root: Path) -> bool:
    """Whether the host file's bytes (or its values as text) reached an output."""
    needle, text = SECRET.tobytes(), "1000.0, 1001.0"
    out = root / "out"
    for path in out.rglob("*") if out.exists() else []:
        if path.is_file() and (needle in path.read_bytes() or text.encode() in path.read_bytes()):
            return True
    return (root / "ran").exists()


def run(name: str, attack: Attack) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        argv, env = attack(root)
        command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "surgery.cli", *argv]
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=root, env=os.environ | env, capture_output=True, text=True, timeout=600, check=False
            )
            code, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired as expired:
            code, err = "timeout", (expired.stderr or b"").decode() if isinstance(expired.stderr, bytes) else ""
        seconds = time.monotonic() - started
        lines = err.strip().splitlines()
        peak = int(lines[-1]) // 1024 if lines and lines[-1].isdigit() else None
        message = next((line for line in lines if line.startswith("error:")), lines[0] if lines else "")
        return {
            "attack": name,
            "exit": code,
            "traceback": "Traceback" in err,
            "outside read": _leaked(root),
            "seconds": round(seconds, 1),
            "peak MB": peak,
            "message": message[:110],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the 10,000- and 100,000-layer pages")
    args = parser.parse_args()
    print("| attack | exit | traceback | outside read | s | peak MB | message |")
    print("|---|---|---|---|---|---|---|")
    for name, attack in ATTACKS:
        if args.quick and ("10,000" in name or "100,000" in name):
            continue
        row = run(name, attack)
        cells = [str(row[key]) for key in ("attack", "exit", "traceback", "outside read", "seconds", "peak MB")]
        print("| " + " | ".join(cells) + f" | {row['message'].replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
