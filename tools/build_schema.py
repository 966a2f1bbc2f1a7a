"""Compile surgery/spec/*.proto into the serialized descriptor set the package loads.

The package builds its message classes at run time from this descriptor set instead of
importing protoc-generated modules, because generated code is tied to one protobuf
major version while a descriptor set works with all of them.

Run after editing a .proto (needs the `dev` extra, grpcio-tools):

    python tools/build_schema.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent.parent / "surgery" / "spec"
PROTOS = ["caffe.proto", "surgery.proto"]
OUT = SPEC_DIR / "schema.binpb"


def build(out: Path = OUT) -> bytes:
    """Compile the protos and return the serialized FileDescriptorSet (also written to ``out``)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "schema.binpb"
        args = ["protoc", f"-I{SPEC_DIR}", f"--descriptor_set_out={target}", "--include_imports", *PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        data = target.read_bytes()
    if out is not None:
        out.write_bytes(data)
    return data


if __name__ == "__main__":
    build()
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}", file=sys.stderr)
