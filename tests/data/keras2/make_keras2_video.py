"""Write the Keras-2 fixtures of tests/test_keras2_files.py with TensorFlow's own Keras
(tf_keras 2.x), which this project does not depend on:

    pip install tensorflow-cpu tf-keras        # about 600 MB, only to remake these files
    python tests/data/keras2/make_keras2_video.py

The video model users ask for, made small: TimeDistributed(a nested Functional CNN named
"vgg16", as keras.applications names it) -> LSTM -> Dense(11), saved in the legacy HDF5
format (``model.h5``), with TensorFlow's ``predict`` on a seeded clip recorded beside it
(``model_io.npz``: ``clip`` and ``predict``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import tf_keras as keras

HERE = Path(__file__).resolve().parent


def backbone() -> keras.Model:
    """VGG16's first block at a sixteenth of the width, as a nested Functional model."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="block1_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name="vgg16")


def main() -> None:
    keras.utils.set_random_seed(0)
    clip = keras.Input((5, 16, 16, 3), name="clip")
    features = keras.layers.TimeDistributed(backbone(), name="frames")(clip)
    hidden = keras.layers.LSTM(8, name="lstm")(features)
    scores = keras.layers.Dense(11, activation="softmax", name="scores")(hidden)
    model = keras.Model(clip, scores, name="video")
    model.save(HERE / "model.h5", save_format="h5")
    sample = np.random.default_rng(1).uniform(-1, 1, (2, 5, 16, 16, 3)).astype("float32")
    np.savez(HERE / "model_io.npz", clip=sample, predict=model.predict(sample, verbose=0))
    print(f"wrote {HERE / 'model.h5'} and model_io.npz ({keras.__version__})")


if __name__ == "__main__":
    main()
