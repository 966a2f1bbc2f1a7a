"""The format-neutral IR: :class:`Net`, :class:`Layer`, :class:`ParamBlob`."""

from surgery.ir.blob import SOURCE, Origin, ParamBlob
from surgery.ir.layer import Layer
from surgery.ir.net import Net, Shape

__all__ = ["Layer", "Net", "Origin", "ParamBlob", "SOURCE", "Shape"]
