"""The format-neutral IR: :class:`Net`, :class:`Layer`, :class:`ParamBlob`."""

from surgery.ir.blob import SOURCE, Origin, ParamBlob
from surgery.ir.layer import Layer
from surgery.ir.net import Net, Shape

__all__ = ["SOURCE", "Layer", "Net", "Origin", "ParamBlob", "Shape"]
