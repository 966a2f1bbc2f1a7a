"""Caffe nets the tests write themselves: prototxt text plus a caffemodel built with the
project's own schema, random weights and realistic BatchNorm statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format

from surgery.spec.schema import caffe_class


def blob(array: np.ndarray, legacy: bool = False):
    proto = caffe_class("BlobProto")()
    if legacy:  # pre-2015 caffemodels: num/channels/height/width, leading 1s
        dims = (1,) * (4 - array.ndim) + array.shape
        proto.num, proto.channels, proto.height, proto.width = dims
    else:
        proto.shape.dim.extend(array.shape)
    proto.data.extend(array.astype(np.float32).reshape(-1).tolist())
    return proto


def write_net(
    folder: Path, name: str, prototxt: str, weights: dict[str, list[np.ndarray]], legacy_blobs: bool = False
) -> tuple[Path, Path]:
    """``prototxt`` (V2 text) and a caffemodel holding ``weights`` by layer name."""
    folder.mkdir(parents=True, exist_ok=True)
    text_path = folder / f"{name}.prototxt"
    text_path.write_text(prototxt)
    net = caffe_class("NetParameter")()
    text_format.Parse(prototxt, net)
    for layer in net.layer:
        for array in weights.get(layer.name, []):
            layer.blobs.append(blob(array, legacy_blobs))
    model_path = folder / f"{name}.caffemodel"
    model_path.write_bytes(net.SerializeToString())
    return text_path, model_path


def to_v1(prototxt: str) -> str:
    """The same net in legacy V1 form (``layers`` with enum types)."""
    net = caffe_class("NetParameter")()
    text_format.Parse(prototxt, net)
    legacy = caffe_class("NetParameter")()
    legacy.name = net.name
    enum = caffe_class("V1LayerParameter")().DESCRIPTOR.fields_by_name["type"].enum_type
    names = {
        "Convolution": "CONVOLUTION",
        "ReLU": "RELU",
        "Pooling": "POOLING",
        "InnerProduct": "INNER_PRODUCT",
        "Softmax": "SOFTMAX",
        "LRN": "LRN",
        "Concat": "CONCAT",
        "Dropout": "DROPOUT",
        "Eltwise": "ELTWISE",
    }
    for index, name in enumerate(net.input):
        legacy.input.append(name)
        legacy.input_dim.extend(net.input_shape[index].dim)
    for layer in net.layer:
        v1 = legacy.layers.add()
        v1.name, v1.type = layer.name, enum.values_by_name[names[layer.type]].number
        v1.bottom.extend(layer.bottom)
        v1.top.extend(layer.top)
        for spec in layer.param:
            v1.blobs_lr.append(spec.lr_mult)
            v1.weight_decay.append(spec.decay_mult)
        for field in (
            "convolution_param",
            "pooling_param",
            "inner_product_param",
            "lrn_param",
            "relu_param",
            "concat_param",
            "dropout_param",
            "eltwise_param",
        ):
            if layer.HasField(field):
                getattr(v1, field).CopyFrom(getattr(layer, field))
    return text_format.MessageToString(legacy)


def rng_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda *shape, scale=0.2: (rng.standard_normal(shape) * scale).astype(np.float32)


def bn_blobs(channels: int, seed: int = 1, factor: float = 0.5) -> list[np.ndarray]:
    """Caffe's BatchNorm blobs: running sums and the scale factor they are divided by."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    return [mean * factor, var * factor, np.array([factor], np.float32)]


MINI_GOOGLENET = """
name: "MiniGoogLeNet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { mirror: true crop_size: 32 mean_value: 104 mean_value: 117 mean_value: 123 }
        data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 32 mean_value: 104 mean_value: 117 mean_value: 123 }
        data_param { source: "val_lmdb" batch_size: 2 backend: LMDB } }
layer { name: "conv1/7x7_s2" type: "Convolution" bottom: "data" top: "conv1/7x7_s2"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 pad: 3 kernel_size: 7 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "conv1/relu_7x7" type: "ReLU" bottom: "conv1/7x7_s2" top: "conv1/7x7_s2" }
layer { name: "pool1/3x3_s2" type: "Pooling" bottom: "conv1/7x7_s2" top: "pool1/3x3_s2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool1/norm1" type: "LRN" bottom: "pool1/3x3_s2" top: "pool1/norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "inception_4a/1x1" type: "Convolution" bottom: "pool1/norm1" top: "inception_4a/1x1"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "inception_4a/relu_1x1" type: "ReLU" bottom: "inception_4a/1x1" top: "inception_4a/1x1" }
layer { name: "inception_4a/3x3" type: "Convolution" bottom: "pool1/norm1" top: "inception_4a/3x3"
        convolution_param { num_output: 6 pad: 1 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "inception_4a/relu_3x3" type: "ReLU" bottom: "inception_4a/3x3" top: "inception_4a/3x3" }
layer { name: "inception_4a/output" type: "Concat" bottom: "inception_4a/1x1" bottom: "inception_4a/3x3"
        top: "inception_4a/output" }
layer { name: "loss1/ave_pool" type: "Pooling" bottom: "inception_4a/output" top: "loss1/ave_pool"
        pooling_param { pool: AVE kernel_size: 5 stride: 3 } }
layer { name: "loss1/fc" type: "InnerProduct" bottom: "loss1/ave_pool" top: "loss1/fc"
        inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "loss1/relu_fc" type: "ReLU" bottom: "loss1/fc" top: "loss1/fc" }
layer { name: "loss1/drop_fc" type: "Dropout" bottom: "loss1/fc" top: "loss1/fc" dropout_param { dropout_ratio: 0.7 } }
layer { name: "loss1/classifier" type: "InnerProduct" bottom: "loss1/fc" top: "loss1/classifier"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" }
        bias_filler { type: "constant" value: 0 } } }
layer { name: "loss1/loss" type: "SoftmaxWithLoss" bottom: "loss1/classifier" bottom: "label" top: "loss1/loss1"
        loss_weight: 0.3 }
layer { name: "loss1/top-1" type: "Accuracy" bottom: "loss1/classifier" bottom: "label" top: "loss1/top-1"
        include { phase: TEST } }
layer { name: "inception_4d/output" type: "Convolution" bottom: "inception_4a/output" top: "inception_4d/output"
        convolution_param { num_output: 10 pad: 1 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "loss2/ave_pool" type: "Pooling" bottom: "inception_4d/output" top: "loss2/ave_pool"
        pooling_param { pool: AVE kernel_size: 5 stride: 3 } }
layer { name: "loss2/classifier" type: "InnerProduct" bottom: "loss2/ave_pool" top: "loss2/classifier"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss2/loss" type: "SoftmaxWithLoss" bottom: "loss2/classifier" bottom: "label" top: "loss2/loss1"
        loss_weight: 0.3 }
layer { name: "pool5/7x7_s1" type: "Pooling" bottom: "inception_4d/output" top: "pool5/7x7_s1"
        pooling_param { pool: AVE kernel_size: 8 stride: 1 } }
layer { name: "pool5/drop_7x7_s1" type: "Dropout" bottom: "pool5/7x7_s1" top: "pool5/7x7_s1"
        dropout_param { dropout_ratio: 0.4 } }
layer { name: "loss3/classifier" type: "InnerProduct" bottom: "pool5/7x7_s1" top: "loss3/classifier"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss3/loss3" type: "SoftmaxWithLoss" bottom: "loss3/classifier" bottom: "label" top: "loss3/loss3"
        loss_weight: 1 }
layer { name: "loss3/top-1" type: "Accuracy" bottom: "loss3/classifier" bottom: "label" top: "loss3/top-1"
        include { phase: TEST } }
"""


def mini_googlenet_weights(seed: int = 0) -> dict[str, list[np.ndarray]]:
    w = rng_weights(seed)
    return {
        "conv1/7x7_s2": [w(8, 3, 7, 7, scale=0.05), w(8)],
        "inception_4a/1x1": [w(4, 8, 1, 1), w(4)],
        "inception_4a/3x3": [w(6, 8, 3, 3), w(6)],
        "loss1/fc": [w(16, 10 * 2 * 2), w(16)],
        "loss1/classifier": [w(10, 16), w(10)],
        "inception_4d/output": [w(10, 10, 3, 3), w(10)],
        "loss2/classifier": [w(10, 10 * 2 * 2), w(10)],
        "loss3/classifier": [w(10, 10), w(10)],
    }
