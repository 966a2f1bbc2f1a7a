"""Keras models in (``.keras`` archives and legacy ``.h5`` files), read without Keras and
compared with Keras itself: emitted torch and emitted ONNX against ``model.predict``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

from keras_models import inputs_for, randomize, save_both, write_keras2_h5  # noqa: E402

import surgery  # noqa: E402
from surgery.emitters.onnx_model import emit_onnx  # noqa: E402
from surgery.errors import ModelFormatError, ShapeError  # noqa: E402
from surgery.importers.keras import import_keras  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:You are saving your model as an HDF5")
L, A = keras.layers, keras.applications
RTOL = 1e-4  # relative to the largest reference value: float32, different summation orders
FORMATS = (".keras", ".h5")


def _nchw(array: np.ndarray) -> np.ndarray:
    """A Keras array in the IR's layout (images and clips channels-first)."""
    if array.ndim == 5:
        return array.transpose(0, 1, 4, 2, 3)
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array


def _ours(
    net: surgery.Net, arrays: list[np.ndarray], tmp_path: Path, nhwc_input: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The emitted torch model's and the emitted ONNX file's outputs."""
    feeds = arrays if nhwc_input else [np.ascontiguousarray(_nchw(a)) for a in arrays]
    model = surgery.to_torch(net).eval()
    with torch.no_grad():
        out_torch = model(*(torch.from_numpy(a) for a in feeds)).numpy()
    ort = pytest.importorskip("onnxruntime")
    from surgery.verify import onnx_session

    del ort
    session = onnx_session(emit_onnx(net, tmp_path / f"{net.name}.onnx"))
    names = [i.name for i in session.get_inputs()]
    out_onnx = session.run(None, dict(zip(names, feeds)))[0]
    return out_torch, out_onnx


def _assert_close(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} vs Keras {reference.shape}"
    error = float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-12))
    assert error <= RTOL, f"{what}: relative difference {error:.2e} > {RTOL}"


def _check(model: keras.Model, tmp_path: Path, name: str, nhwc_input: bool = False) -> None:
    """Both file formats, both emitted forms, against Keras's predict."""
    arrays = inputs_for(model)
    reference = _nchw(np.asarray(model.predict(arrays if len(arrays) > 1 else arrays[0], verbose=0)))
    for suffix, path in save_both(model, tmp_path, name).items():
        net = import_keras(path, input_shape=arrays[0].shape, nhwc_input=nhwc_input)
        out_torch, out_onnx = _ours(net, arrays, tmp_path, nhwc_input)
        _assert_close(out_torch, reference, f"{name}{suffix} torch")
        _assert_close(out_onnx, reference, f"{name}{suffix} onnx")


# ------------------------------------------------------------------ applications
def _app(factory: Callable, shape: tuple[int, int, int], **kwargs) -> Callable[[], keras.Model]:
    return lambda: factory(weights=None, input_shape=shape, classes=7, classifier_activation=None, **kwargs)


APPLICATIONS = {
    # VGG16 at 64x64 ends its trunk on a 2x2 map: its Flatten -> fc1 exercises the column permutation.
    "VGG16": _app(A.VGG16, (64, 64, 3)),
    "VGG19": _app(A.VGG19, (32, 32, 3)),
    "ResNet50": _app(A.ResNet50, (32, 32, 3)),
    "ResNet50V2": _app(A.ResNet50V2, (32, 32, 3)),
    "MobileNet": _app(A.MobileNet, (32, 32, 3), alpha=0.25),
    "MobileNetV2": _app(A.MobileNetV2, (32, 32, 3), alpha=0.35),
    "InceptionV3": _app(A.InceptionV3, (75, 75, 3)),
    "DenseNet121": _app(A.DenseNet121, (32, 32, 3)),
    "Xception": _app(A.Xception, (71, 71, 3)),
    "EfficientNetB0": _app(A.EfficientNetB0, (32, 32, 3)),
    "MobileNetV3Small": _app(A.MobileNetV3Small, (32, 32, 3)),
    "MobileNetV3Large": _app(A.MobileNetV3Large, (32, 32, 3)),
}
FAST = {"MobileNet", "MobileNetV2", "MobileNetV3Small"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in APPLICATIONS])
def test_application_matches_keras(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    _check(randomize(APPLICATIONS[name]()), tmp_path, name.lower())


# --------------------------------------------------------------------- layer table
def _flatten_dense() -> keras.Model:
    """A Flatten of a 3x2 map into Dense: Keras flattens H, W, C; the IR C, H, W."""
    x = keras.Input((6, 4, 3))
    y = L.Conv2D(5, 3, strides=(2, 1), padding="same", activation="relu")(x)
    y = L.Flatten()(y)
    y = L.Dropout(0.3)(y)
    y = L.Dense(8, activation="tanh")(y)
    return keras.Model(x, L.Dense(3)(y))


def _same_padding() -> keras.Model:
    """TensorFlow's asymmetric 'same' padding at stride 2, on odd and even sizes."""
    x = keras.Input((9, 8, 3))
    y = L.Conv2D(6, 3, strides=2, padding="same")(x)
    y = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu6")(y)
    y = L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, activation="sigmoid")(y)
    y = L.MaxPooling2D(3, strides=2, padding="same")(L.ZeroPadding2D(((1, 2), (0, 3)))(y))
    y = L.AveragePooling2D(3, strides=1, padding="same")(y)
    y = L.AveragePooling2D(2, padding="same")(y)
    return keras.Model(x, L.GlobalMaxPooling2D()(y))


def _grouped() -> keras.Model:
    x = keras.Input((8, 8, 6))
    y = L.Conv2D(9, 3, groups=3, dilation_rate=2, padding="same", use_bias=False)(x)
    y = L.BatchNormalization(center=False, epsilon=1e-2)(y)
    y = L.BatchNormalization(scale=False, momentum=0.9)(y)
    y = L.ReLU(negative_slope=0.1)(y)
    y = L.LeakyReLU(negative_slope=0.2)(L.Dense(4)(y))  # a Dense on an image: a 1x1 convolution
    y = L.GlobalAveragePooling2D(keepdims=True)(y)
    y = L.Reshape((4,))(y)
    return keras.Model(x, L.BatchNormalization()(L.Dense(3, use_bias=False)(y)))


def _merges() -> keras.Model:
    x = keras.Input((5, 5, 4))
    a = L.Conv2D(4, 1)(x)
    b = L.Conv2D(4, 3, padding="same")(x)
    gate = L.Reshape((1, 1, 4))(L.Dense(4, activation="hard_sigmoid")(L.GlobalAveragePooling2D()(a)))
    parts = [
        L.Add()([a, b]),
        L.Subtract()([a, b]),
        L.Multiply()([b, gate]),
        L.Average()([a, b, x]),
        L.Maximum()([a, b]),
        (a + 1.5) * 0.25,
        2.0 - b / 4.0,
    ]
    y = L.Concatenate()(parts)
    y = L.Activation("hard_silu")(y)
    return keras.Model(x, L.Softmax()(L.Conv2D(3, 1)(y)))


def _preprocessing() -> keras.Model:
    x = keras.Input((4, 4, 3))
    y = L.Rescaling(1 / 127.5, offset=-1.0)(x)
    y = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5])(y)
    y = L.Normalization(axis=-1)(y)  # statistics in variables (adapted)
    return keras.Model(x, L.Activation("softmax")(L.Flatten()(L.GlobalAveragePooling2D(keepdims=True)(y))))


def _sequence_dense() -> keras.Model:
    """A Dense on the last axis of an (N, T, F) tensor, a Sequential model nested as a
    layer, and a Functional model nested as a layer."""
    inner = keras.Sequential([keras.Input((5,)), L.Dense(6, activation="relu"), L.Dense(4)], name="inner_seq")
    x_in = keras.Input((5,))
    nested = keras.Model(x_in, L.Dense(5, activation="tanh", name="nested_fc")(x_in), name="nested")
    x = keras.Input((3, 7))
    y = L.Flatten()(L.Dense(5, name="per_step")(x))
    y = L.Dense(5)(y)
    return keras.Model(x, inner(nested(y)))


def _activations() -> keras.Model:
    x = keras.Input((4, 4, 3))
    y = L.Conv2D(6, 1, activation="swish")(x)
    for name in ("gelu", "mish", "silu", "tanh", "sigmoid", "hard_sigmoid", "relu6", "relu"):
        y = L.Activation(name)(L.Conv2D(6, 1)(y))
    return keras.Model(x, L.Dense(3, activation="gelu")(L.GlobalAveragePooling2D()(y)))


def _recurrent() -> keras.Model:
    """GRU (reset_after, Keras 3's default) and LSTM, returning sequences or the last
    step, bidirectional, a TimeDistributed Dense on the steps, LayerNormalization."""
    x = keras.Input((5, 6))
    y = L.GRU(7, return_sequences=True)(x)
    y = L.LayerNormalization()(L.LSTM(4, return_sequences=True)(y))
    y = L.TimeDistributed(L.Dense(3, activation="relu"), name="per_step")(y)
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(y)
    y = L.Bidirectional(L.GRU(5, return_sequences=True))(y)
    y = L.Bidirectional(L.LSTM(6, use_bias=False), name="both_ways")(y)
    return keras.Model(x, L.LayerNormalization(center=False, epsilon=1e-5)(L.Dense(2)(y)))


def _reorders() -> keras.Model:
    """Where Keras's channels-last order matters beyond a Dense: flattened maps
    concatenated, reshaped and permuted; a Reshape from a vector to an image."""
    x = keras.Input((3, 4, 5))
    a = L.Conv2D(6, 1)(x)
    flat_a, flat_b = L.Flatten()(a), L.Flatten()(L.Conv2D(2, 3, padding="same")(x))
    steps = L.Flatten()(L.Dense(3)(L.Reshape((12, 6))(a)))
    swapped = L.Flatten()(L.Conv2D(3, 1)(L.Permute((2, 1, 3))(a)))
    image = L.Flatten()(L.Conv2D(2, 1)(L.Reshape((3, 4, 2))(L.Dense(24)(flat_b))))
    return keras.Model(x, L.Concatenate()([flat_a, flat_b, steps, swapped, image]))


LAYER_CASES = {
    "reorders": _reorders,
    "activations": _activations,
    "recurrent": _recurrent,
    "flatten_dense": _flatten_dense,
    "same_padding": _same_padding,
    "grouped": _grouped,
    "merges": _merges,
    "preprocessing": _preprocessing,
    "sequence_dense": _sequence_dense,
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_case_matches_keras(case: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = LAYER_CASES[case]()
    if case == "preprocessing":
        model.layers[3].adapt(np.random.default_rng(2).normal(0.5, 2.0, (16, 4, 4, 3)).astype("float32"))
    _check(randomize(model), tmp_path, case)


def test_nhwc_input_option(tmp_path: Path) -> None:
    """The emitted models take Keras-style (N, H, W, C) arrays: one Permute at the input."""
    keras.utils.set_random_seed(0)
    _check(randomize(_merges()), tmp_path, "nhwc", nhwc_input=True)
    net = import_keras(tmp_path / "nhwc.keras", nhwc_input=True)
    first = net.layer_names()[:2]
    assert [net.layer(n).type for n in first] == ["Input", "Permute"]
    assert net.layer(first[0]).params["shape"] == (1, 5, 5, 4)
    assert sum(layer.type == "Permute" for layer in net.layers()) == 1


def test_flatten_output_in_keras_order(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 3, 2))
    _check(randomize(keras.Model(x, L.Flatten()(L.Conv2D(4, 1)(x)))), tmp_path, "flat_out")


@pytest.mark.parametrize("nhwc_input", [False, True])
def test_small_clip_model(nhwc_input: bool, tmp_path: Path) -> None:
    """TimeDistributed over a small conv model (BatchNorm, strided 'same' padding), then a
    GRU: the per-frame part folds the time axis into the batch."""
    keras.utils.set_random_seed(0)
    frame = keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            L.Conv2D(4, 3, strides=2, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
        ],
        name="frame_net",
    )
    clips = keras.Input((4, 9, 9, 3))
    y = L.GRU(5)(L.TimeDistributed(frame)(clips))
    _check(randomize(keras.Model(clips, L.Dense(3)(y))), tmp_path, "clip", nhwc_input=nhwc_input)


@pytest.mark.slow
def test_video_model_matches_keras(tmp_path: Path) -> None:
    """TimeDistributed(VGG16 trunk) -> LSTM -> Dense: the trunk runs per frame (the time
    axis folded into the batch), the LSTM(256) over the 40 frames' features (32x32 frames
    here to keep it quick; no layer depends on the frame size)."""
    keras.utils.set_random_seed(0)
    trunk = A.VGG16(include_top=False, pooling="avg", weights=None, input_shape=(32, 32, 3))
    clips = keras.Input((40, 32, 32, 3))
    features = L.TimeDistributed(trunk, name="frames")(clips)
    model = keras.Model(clips, L.Dense(11, activation="softmax")(L.LSTM(256)(features)))
    _check(randomize(model), tmp_path, "video")
    net = import_keras(tmp_path / "video.keras")
    lstm = next(layer for layer in net.layers() if layer.type == "LSTM")
    assert net.layer("block5_conv3").per_frame and not lstm.per_frame


def test_sequential_model(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(4, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(5, activation="softmax"),
        ],
        name="seq",
    )
    _check(randomize(model), tmp_path, "seq")


# ------------------------------------------------------------------------ names etc.
def test_names_are_keras_names_and_nothing_is_read(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = A.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16.keras"
    model.save(path)
    net = surgery.load(str(path))
    names = net.layer_names()
    assert {"block1_conv1", "block2_pool", "block5_pool", "block1_conv1/relu"} <= set(names)
    assert net.layer("block2_pool").type == "Pooling"
    assert not any(blob.is_loaded for layer in net.layers() for blob in layer.blobs.values())
    weight = net.layer("block1_conv1").blobs["weight"]
    assert weight.shape == (64, 3, 3, 3)
    kernel = model.get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(weight.data.numpy(), kernel.transpose(3, 2, 0, 1))


def test_keras2_legacy_h5(tmp_path: Path) -> None:
    """An .h5 file in TensorFlow Keras 2's form reads the same as Keras 3 reads it."""
    path = write_keras2_h5(tmp_path / "keras2.h5")
    reference_model = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 5, 4, 3)).astype("float32")
    reference = np.asarray(reference_model.predict(x, verbose=0))
    out_torch, out_onnx = _ours(import_keras(path, input_shape=x.shape), [x], tmp_path)
    _assert_close(out_torch, reference, "keras2.h5 torch")
    _assert_close(out_onnx, reference, "keras2.h5 onnx")


def test_recompressed_archive_reads_the_same(tmp_path: Path) -> None:
    """A .keras archive re-zipped with compression cannot be viewed in place: the weights
    file is read into memory instead, with the same values."""
    import zipfile

    keras.utils.set_random_seed(0)
    path = tmp_path / "stored.keras"
    randomize(_grouped()).save(path)
    packed = tmp_path / "deflated.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item.filename))
    stored, deflated = import_keras(path), import_keras(packed)
    for layer in stored.layers():
        for role, blob in layer.blobs.items():
            assert torch.equal(blob.data, deflated.layer(layer.name).blobs[role].data), (layer.name, role)


def test_cli_inspect_keras_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = _flatten_dense()
    conv, last = model.layers[1].name, model.layers[-1].name  # Keras numbers unnamed layers per process
    for path in save_both(model, tmp_path, "small").values():
        run = subprocess.run(
            [sys.executable, "-m", "surgery.cli", "inspect", str(path)],
            capture_output=True,
            text=True,
            env=os.environ | {"PYTHONPATH": str(Path(surgery.__file__).parent.parent)},
        )
        assert run.returncode == 0, run.stderr
        assert f"{conv}/relu" in run.stdout and last in run.stdout


def test_unknown_spatial_axes_need_an_input_shape(tmp_path: Path) -> None:
    model = A.MobileNet(weights=None, include_top=False, input_shape=(None, None, 3), alpha=0.25)
    path = tmp_path / "open.keras"
    model.save(path)
    with pytest.raises(ShapeError, match="input_shape"):
        import_keras(path)
    net = import_keras(path, input_shape=(1, 40, 40, 3))
    assert net.shapes()[net.outputs[0]] == (1, 256, 1, 1)


@keras.saving.register_keras_serializable(package="tests")
class Doubler(L.Layer):
    def call(self, x):
        return x * 2


def test_lambda_custom_and_unmapped_layers_are_refused_at_once(tmp_path: Path) -> None:
    x = keras.Input((6, 6, 3))
    y = L.Lambda(lambda t: t + 1, name="shift_by_code")(x)
    y = Doubler(name="doubler")(y)
    y = L.Cropping2D(1, name="crop")(y)
    path = tmp_path / "refused.keras"
    keras.Model(x, L.Conv2D(2, 1)(y)).save(path)
    with pytest.raises(ModelFormatError) as caught:
        import_keras(path)
    message = str(caught.value)
    assert "3 layer(s)" in message
    assert "Lambda layer 'shift_by_code'" in message and "never runs it" in message
    assert "custom object 'doubler'" in message
    assert "'crop' (Cropping2D) has no mapping" in message
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(surgery.__file__).parent.parent)},
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and "shift_by_code" in run.stderr


@pytest.mark.parametrize(
    "layer, message",
    [
        (lambda: L.GRU(3, reset_after=False), "reset_after: false"),
        (lambda: L.LSTM(3, activation="relu"), "activation 'relu' has no torch form"),
        (lambda: L.LSTM(3, go_backwards=True), "go_backwards: true"),
        (lambda: L.Bidirectional(L.LSTM(3), merge_mode="sum"), "merge_mode 'sum'"),
    ],
)
def test_recurrent_options_without_a_torch_form_are_refused(layer, message: str, tmp_path: Path) -> None:
    x = keras.Input((4, 5))
    path = tmp_path / "rnn.keras"
    keras.Model(x, layer()(x)).save(path)
    with pytest.raises(ModelFormatError) as caught:
        import_keras(path)
    assert message in str(caught.value)


def test_not_a_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match=r"neither a .keras archive nor an HDF5 file"):
        import_keras(path)
    with pytest.raises(ModelFormatError, match="does not exist"):
        import_keras(tmp_path / "missing.keras")
