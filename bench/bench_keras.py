"""Keras benchmark on keras.applications VGG16 (224x224, with its top; seeded initial
weights), ratios measured side by side on the same ``.keras`` file:

1. surgery reading the file and every weight (``import_keras`` + each blob's data, in
   the IR's layout) vs ``keras.models.load_model`` (goal <= 1.0x);
2. surgery reading the file for ``inspect`` / ``plan`` (names and shapes, no weight) vs
   ``keras.models.load_model``.

Run: ``python bench/bench_keras.py`` (needs Keras; the file is written once to
bench/.cache/).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import interleaved, print_row

CACHE = Path(__file__).resolve().parent / ".cache"


def vgg16_file() -> Path:
    import keras

    path = CACHE / "keras_vgg16.keras"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        keras.utils.set_random_seed(0)
        partial = path.with_name(f".{path.name}.{os.getpid()}.keras")
        keras.applications.VGG16(weights=None).save(partial)
        os.replace(partial, path)
    return path


def read_all(path: Path) -> int:
    from surgery.importers.keras import import_keras

    net = import_keras(path)
    return sum(blob.data.numel() for layer in net.layers() for blob in layer.blobs.values())


def read_names(path: Path) -> int:
    from surgery.importers.keras import import_keras

    return len(import_keras(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import keras

    path = vgg16_file()
    load = lambda: keras.models.load_model(path, compile=False)  # noqa: E731
    keras_s, ours_s = interleaved(load, lambda: read_all(path), args.repeat)
    print_row(
        "Keras VGG16: read all weights vs keras load_model (goal <= 1.0x)",
        {"ratio": ours_s / keras_s, "ours": ours_s, "keras": keras_s},
        "ours",
        "keras",
    )
    keras_s, names_s = interleaved(load, lambda: read_names(path), args.repeat)
    print_row(
        "Keras VGG16: names and shapes only vs keras load_model",
        {"ratio": names_s / keras_s, "ours": names_s, "keras": keras_s},
        "ours",
        "keras",
    )


if __name__ == "__main__":
    main()
