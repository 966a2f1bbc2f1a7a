"""Write the Keras sources of ``specs/keras_vgg16_cut.prototxt`` and the Keras tests.

- ``examples/keras/mini_vgg16.keras`` (committed, about 50 kB): VGG16's first three
  blocks as ``keras.applications.VGG16`` builds them (the same layer names, kernels,
  pools and order) at an eighth of the width, 32x32 RGB input, seeded weights. The
  scenario spec reads it, so the spec plans, draws and applies on a fresh clone.
- ``examples/keras/vgg16.keras`` (about 60 MB, generated, not kept): the whole of
  Keras's VGG16 trunk (no top), the same way, for the tests and the bench.

Both need Keras (any backend; torch is used when none is set)::

    python examples/make_keras_vgg16.py          # the mini file
    python examples/make_keras_vgg16.py --full   # the whole trunk
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "keras"
OUT = FOLDER / "vgg16.keras"
MINI = FOLDER / "mini_vgg16.keras"
#: VGG16's blocks: (convolutions, filters); the mini file keeps three at 1/8 width.
MINI_BLOCKS = ((2, 8), (2, 16), (3, 32))


def make(path: Path = OUT, seed: int = 0) -> Path:
    """Keras's whole VGG16 trunk (written to a temporary name, then renamed)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    return _save(model, path)


def make_mini(path: Path = MINI, seed: int = 0) -> Path:
    """VGG16's first blocks, narrow, with keras.applications' layer names."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="input_layer")
    x = inputs
    for block, (convs, filters) in enumerate(MINI_BLOCKS, 1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"block{block}_conv{conv}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return _save(keras.Model(inputs, x, name="mini_vgg16"), path)


def _save(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.keras")
    model.save(partial)
    os.replace(partial, path)
    return path


if __name__ == "__main__":
    print(make() if "--full" in sys.argv[1:] else make_mini())
