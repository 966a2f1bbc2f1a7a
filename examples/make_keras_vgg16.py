"""Write ``examples/keras/vgg16.keras``: Keras's VGG16 convolutional trunk (no top,
32x32 RGB input, seeded initial weights), the source of ``specs/keras_vgg16_cut.prototxt``.

The file is about 60 MB, so it is generated rather than kept in the repository. It needs
Keras (any backend; torch is used when none is set):

    python examples/make_keras_vgg16.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "keras" / "vgg16.keras"


def make(path: Path = OUT, seed: int = 0) -> Path:
    """Build and save the model (written to a temporary name, then renamed)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.keras")
    model.save(partial)
    os.replace(partial, path)
    return path


if __name__ == "__main__":
    print(make(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
