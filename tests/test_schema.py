"""The compiled descriptor set the package loads (surgery/spec/schema.binpb) is what the
.proto files say: a .proto edited without ``python tools/build_schema.py`` fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_descriptor_set_matches_the_protos() -> None:
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools (the test extra)")
    spec = importlib.util.spec_from_file_location("build_schema", ROOT / "tools" / "build_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(module.build(out=None))
    shipped = descriptor_pb2.FileDescriptorSet.FromString(module.OUT.read_bytes())
    assert [f.name for f in fresh.file] == [f.name for f in shipped.file]
    for new, old in zip(fresh.file, shipped.file):
        assert new == old, f"{old.name} changed: run `python tools/build_schema.py`"
