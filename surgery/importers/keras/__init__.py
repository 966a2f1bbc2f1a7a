"""Keras importer: a ``.keras`` archive or a legacy ``.h5`` file becomes a :class:`Net`.

Reads the model config (JSON) and the weights (HDF5, through h5py) only: no TensorFlow
and no Keras at run time. Layer names are the Keras names; a layer's fused activation
becomes its own layer ``<name>/<activation>`` and helper layers (an explicit padding, a
separable convolution's depthwise half) are ``<name>/<role>``. Image tensors become NCHW:
kernels are transposed at import and the first Dense after a Flatten has its columns
permuted, so the net computes the Keras model's function with channels first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery.errors import ModelFormatError, SurgeryError
from surgery.importers.keras import activations, conv, core, merge, recurrent  # noqa: F401  (register the mappings)
from surgery.importers.keras.archive import open_keras
from surgery.importers.keras.builder import Builder
from surgery.importers.keras.core import keras_order
from surgery.importers.keras.walk import MODEL_CLASSES, Walker, refuse_unmapped
from surgery.ir import Net

SUFFIXES = (".keras", ".h5", ".hdf5")


def import_keras(
    path: str | Path, input_shape: tuple[int, ...] | None = None, name: str | None = None, nhwc_input: bool = False
) -> Net:
    """Read a Keras model file into a :class:`Net` (weights are read on first use).

    Args:
        path: a Keras 3 ``.keras`` archive or a legacy ``.h5`` model file.
        input_shape: the input's shape in Keras's order (batch, height, width, channels);
            needed when the file leaves spatial axes unknown. Default: the file's, batch 1.
        name: the net's name (default: the Keras model's).
        nhwc_input: keep Keras's channels-last input on the net (and the emitted models):
            the input layer takes ``(N, H, W, C)`` arrays and one Permute makes them NCHW.

    Raises:
        ModelFormatError: an unreadable file, or layers surgery cannot map (Lambda layers,
            custom objects, unmapped classes), all listed in one message.

    Example:
        >>> net = import_keras("vgg16.keras")
        >>> net.layer("block2_pool").type
        'Pooling'
    """
    path = Path(path)
    shape = tuple(int(d) for d in input_shape) if input_shape else None
    walker: Walker | None = None
    try:
        opened = open_keras(path)
        model = opened.config
        if model.get("class_name") not in MODEL_CLASSES:
            raise ModelFormatError(
                f"{str(path)!r} holds a {model.get('class_name')!r}, not a Functional or Sequential model",
                fix="save a keras.Model or keras.Sequential",
            )
        refuse_unmapped(model)
        net = Net(name or _model_name(model) or path.stem)
        walker = Walker(Builder(net, batch=shape[0] if shape else 1), shape, nhwc_input)
        outputs = walker.model(model, opened.scope, None)
        outputs = [keras_order(walker.b, t, t.blob) if t.flattened else t for t in outputs]
        net.set_outputs([t.blob for t in outputs])
        net.shapes()
    except SurgeryError:
        raise
    except _MALFORMED as error:
        # The config is JSON from a stranger: a value of the wrong type or shape anywhere
        # (null units, a string where a list goes, a bit flipped in the HDF5 file) ends
        # here as one error naming the layer, never as a traceback from the mapping code.
        where = f"layer {walker.at!r}" if walker is not None and walker.at else "the model"
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise ModelFormatError(
            f"{str(path)!r}: the Keras config of {where} cannot be read ({type(error).__name__}: {detail})",
            fix="the file is corrupt or was not written by Keras: save the model again with model.save()",
        ) from None
    return net


#: What mapping code raises on a config value of the wrong type or shape, or on HDF5 data
#: that h5py cannot read.
_MALFORMED = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    IndexError,
    OSError,
    RuntimeError,
    OverflowError,
    ZeroDivisionError,
)


def _model_name(model: dict[str, Any]) -> str | None:
    config = model.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None
