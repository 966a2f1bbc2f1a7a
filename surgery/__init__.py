"""surgery: declarative model surgery.

Load a pretrained network (PyTorch, ONNX, Caffe) as a graph, edit it with a spec file
or these functions, and emit a trainable PyTorch model (and ONNX), with a report of
where every weight came from.

Example:
    >>> import surgery
    >>> result = surgery.apply("specs/digits_parity.prototxt", "out/digits_parity")
    >>> print(result.report.format_table())
"""

from surgery.api import (
    ApplyResult,
    Plan,
    append,
    apply,
    classifier,
    collapse,
    cut,
    draw,
    edit,
    eltwise,
    fc_to_conv,
    features,
    fetch,
    fold_batchnorm,
    insert,
    load,
    lr,
    plan,
    remove,
    replace,
    report,
    save_onnx,
    save_torch,
    sequence,
    split,
    stream,
    to_torch,
)
from surgery.emitters.torch_module import load_torch_folder
from surgery.errors import ModelFormatError, ShapeError, SpecError, SurgeryError
from surgery.ir import Layer, Net, ParamBlob
from surgery.report import Report

__version__ = "0.1.0"

__all__ = [
    "ApplyResult",
    "Layer",
    "ModelFormatError",
    "Net",
    "ParamBlob",
    "Plan",
    "Report",
    "ShapeError",
    "SpecError",
    "SurgeryError",
    "append",
    "apply",
    "classifier",
    "collapse",
    "cut",
    "draw",
    "edit",
    "eltwise",
    "fc_to_conv",
    "features",
    "fetch",
    "fold_batchnorm",
    "insert",
    "load",
    "load_torch_folder",
    "lr",
    "plan",
    "remove",
    "replace",
    "report",
    "save_onnx",
    "save_torch",
    "sequence",
    "split",
    "stream",
    "to_torch",
]
