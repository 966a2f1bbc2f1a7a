"""The spec: schema (``surgery.proto``), message classes, and the file loader."""

from surgery.spec.loader import LoadedSpec, Locator, load_spec, parse_spec
from surgery.spec.schema import caffe_class, spec_class

__all__ = ["LoadedSpec", "Locator", "caffe_class", "load_spec", "parse_spec", "spec_class"]
