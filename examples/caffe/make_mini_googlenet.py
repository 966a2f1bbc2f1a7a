"""Write mini_googlenet.caffemodel for mini_googlenet_train_val.prototxt.

The weights are seeded random values (there is no dataset behind this miniature): the file
exists so that specs/googlenet_flowers.prototxt runs end to end offline exactly as it does
on BVLC's real GoogLeNet files, with the weight copy by layer name Caffe performs.

    python examples/caffe/make_mini_googlenet.py
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from surgery.importers.caffe import import_caffe
from surgery.spec.schema import caffe_class

HERE = Path(__file__).resolve().parent


def main() -> Path:
    prototxt = HERE / "mini_googlenet_train_val.prototxt"
    net = import_caffe(prototxt, seed=2024)  # every layer gets its seeded filler weights
    message = caffe_class("NetParameter")()
    text_format.Parse(prototxt.read_text(), message)
    for layer in message.layer:
        if layer.name in net and net.layer(layer.name).blobs:
            for role in ("weight", "bias"):
                blob = net.layer(layer.name).blobs.get(role)
                if blob is not None:
                    proto = layer.blobs.add()
                    proto.shape.dim.extend(blob.shape)
                    proto.data.extend(blob.data.reshape(-1).tolist())
    out = HERE / "mini_googlenet.caffemodel"
    out.write_bytes(message.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")
    return out


if __name__ == "__main__":
    main()
