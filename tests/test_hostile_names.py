"""Names from model files and specs are data: whatever they hold (quotes, newlines,
keywords, ``..a..b``, code), they round-trip unchanged into the report and the ONNX
file, the emitted model loads and computes, and nothing they spell is executed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from caffe_nets import rng_weights, write_net
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import surgery
from surgery.spec.schema import caffe_class

ATOL = 1e-5


def hostile_names(marker: Path) -> list[str]:
    """Names that break naive code generation; several would create ``marker`` if pasted
    into Python source."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return [
        f'evil"""; {touch}; """',
        f"evil'''; {touch}; '''",
        f"a\"b'c\\d\n{touch}  # ",
        f"x\n{touch}\n",
        f"{{{touch}}}",
        "# not a comment {} %s {0}",
        "class.def.import",
        ".",
        "..a..b",
        "a.",
        "self",
        "training",
        "forward",
        "global",
        "ünïcødé 层 ﬁ",
        "x" * 10_000,
        "0",
        "weight",
    ]


def _check_outputs(out: Path, names: list[str], marker: Path, net_name: str | None = None) -> None:
    """The report and the ONNX file keep every name; the torch folder loads and agrees
    with onnxruntime; the marker file was never created."""
    import onnxruntime as ort

    report = json.loads((out / "report.json").read_text())
    reported = {row["name"] for row in report["layers"]}
    assert set(names) <= reported, sorted(set(names) - reported)[:3]
    if net_name is not None:
        assert report["net"] == net_name
    model_proto = onnx.load(str(out / "model.onnx"))
    assert set(names) <= {node.name for node in model_proto.graph.node}
    if net_name is not None:
        assert model_proto.graph.name == net_name
    model = surgery.load_torch_folder(out / "torch").eval()
    shape = [d.dim_value or 2 for d in model_proto.graph.input[0].type.tensor_type.shape.dim]
    x = torch.randn(*shape)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=ATOL)
    assert not marker.exists(), "a name was executed"


def _caffe_net(folder: Path, names: list[str], net_name: str) -> tuple[Path, Path]:
    """Input -> (Convolution, ReLU) per name -> InnerProduct, layers and tops named from ``names``."""
    net = caffe_class("NetParameter")()
    net.name = net_name
    data = net.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add().dim.extend([2, 3, 6, 6])
    bottom, weights, w = "data", {}, rng_weights(3)
    for index, name in enumerate(names):
        conv = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name + " out"])
        conv.convolution_param.num_output, conv.convolution_param.kernel_size[:] = 3, [1]
        weights[name] = [w(3, 3, 1, 1), w(3)]
        relu = net.layer.add(name=f"{name}#relu{index}", type="ReLU", bottom=[name + " out"], top=[name + " out"])
        del relu
        bottom = name + " out"
    fc = net.layer.add(name="fc\"'", type="InnerProduct", bottom=[bottom], top=["prob\n"])
    fc.inner_product_param.num_output = 4
    weights["fc\"'"] = [w(4, 108), w(4)]
    from google.protobuf import text_format

    return write_net(folder, "hostile", text_format.MessageToString(net), weights)


def _write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


def test_caffe_names_and_net_name(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    names = hostile_names(marker)
    net_name = hostile_names(marker)[0]
    prototxt, caffemodel = _caffe_net(tmp_path / "src", names, net_name)
    spec = _write_spec(
        tmp_path / "spec.json",
        {
            "source": {"caffe": {"prototxt": str(prototxt), "weights": str(caffemodel)}},
            "seed": 1,
            "edit": [{"lr": {"layer": [names[0], names[3]], "lr_mult": 0}}],
        },
    )
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "apply", str(spec), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    _check_outputs(tmp_path / "out", names, marker, net_name)
    model = surgery.load_torch_folder(tmp_path / "out" / "torch")
    for name in names:  # each layer's module holds its caffemodel weights, found by its name
        module = model.layer_module(name)
        assert isinstance(module, nn.Conv2d)
    assert not model.layer_module(names[0]).weight.requires_grad
    assert model.layer_module(names[1]).weight.requires_grad
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) == 4


def test_onnx_graph_node_initializer_and_value_names(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    names = hostile_names(marker)
    rng = np.random.default_rng(0)
    nodes, inits, value = [], [], "in'put\"\n"
    for index, name in enumerate(names):
        weight, bias = f"{name}.weight", f"{name}.bias'''{index}"
        inits += [
            numpy_helper.from_array((0.5 * rng.standard_normal((3, 3, 1, 1))).astype(np.float32), weight),
            numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), bias),
        ]
        out = f"{name}\n{index}"
        nodes.append(helper.make_node("Conv", [value, weight, bias], [out], name=name))
        value = out
    graph = helper.make_graph(
        nodes,
        hostile_names(marker)[1],
        [helper.make_tensor_value_info("in'put\"\n", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info(value, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    source = tmp_path / "src.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    spec = _write_spec(tmp_path / "spec.json", {"source": {"onnx": {"path": "src.onnx"}}, "seed": 2})
    surgery.apply(spec, tmp_path / "out")
    _check_outputs(tmp_path / "out", names, marker, hostile_names(marker)[1])


class _Named(nn.Module):
    """Submodules registered under names torch allows (no dots, not empty)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        for name in names:
            self.add_module(name, nn.Conv2d(3, 3, 1))
        self.add_module("plain", nn.Conv2d(3, 3, 1))

    def forward(self, x):
        for name in self.names:
            x = torch.relu(getattr(self, name)(x))
        return self.plain(x)


def test_torch_module_paths(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    names = [n for n in hostile_names(marker) if "." not in n and n not in ("self", "training", "forward", "weight")]
    source = _Named(names)
    net = surgery.load(source, (2, 3, 4, 4), name=hostile_names(marker)[2])
    model = surgery.to_torch(net).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert model.state_dict()["plain.weight"].equal(source.plain.weight)  # a plain name keeps its key
    surgery.save_torch(net, tmp_path / "torch")
    surgery.save_onnx(net, tmp_path / "model.onnx")
    (tmp_path / "report.json").write_text(surgery.report(net).to_json())
    _check_outputs(tmp_path, names, marker, hostile_names(marker)[2])


def test_spec_names_new_layers_and_renames(tmp_path: Path, toy_spec) -> None:
    marker = tmp_path / "pwned"
    names = hostile_names(marker)
    from toy_nets import toy_cnn

    torch.save(toy_cnn().state_dict(), tmp_path / "toy.pt")
    spec = _write_spec(
        tmp_path / "spec.json",
        {
            "source": {
                "torch": {"factory": f"{Path(__file__).parent / 'toy_nets.py'}:ToyCNN", "weights": "toy.pt"},
                "input_shape": [2, 3, 16, 16],
            },
            "name": names[1],
            "seed": 5,
            "edit": [
                {"classifier": {"layer": ["classifier.fc2"], "rename": [names[0]], "num_output": 3}},
                {
                    "append": {
                        "layer": [
                            {"name": n, "type": "InnerProduct", "inner_product_param": {"num_output": 3}}
                            for n in names[1:]
                        ]
                    }
                },
                {"lr": {"layer": [names[2]], "lr_mult": 0.5}},
            ],
        },
    )
    surgery.apply(spec, tmp_path / "out")
    _check_outputs(tmp_path / "out", names, marker, names[1])
    model = surgery.load_torch_folder(tmp_path / "out" / "torch")
    group = next(g for g in model.param_groups(lr=1.0) if g["lr_mult"] == 0.5)
    assert len(group["params"]) == 2
