"""Message classes for the spec and Caffe schemas, built at run time.

The classes come from ``schema.binpb``, a serialized FileDescriptorSet compiled from
``caffe.proto`` and ``surgery.proto`` by ``tools/build_schema.py``. Building classes
from a descriptor set works under every protobuf major version, where protoc-generated
modules would pin one.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__package__).joinpath("schema.binpb").read_bytes()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:
        pool.Add(file_proto)
    return pool


@cache
def message_class(full_name: str) -> type[Message]:
    """The message class for a fully qualified name, e.g. ``surgery.spec.Spec``."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def spec_class(name: str) -> type[Message]:
    """A message class of the spec schema (``Spec``, ``Edit``, ``Classifier``...)."""
    return message_class(f"surgery.spec.{name}")


def caffe_class(name: str) -> type[Message]:
    """A message class of the Caffe schema (``NetParameter``, ``LayerParameter``...)."""
    return message_class(f"surgery.caffe.{name}")
