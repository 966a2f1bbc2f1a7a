"""Small protobuf helpers every floor uses (spec, Caffe and ONNX messages alike)."""

from __future__ import annotations

from typing import Any


def enum_name(message: Any, field: str) -> str:
    """The name of an enum field's value (``"MAX"`` for ``pool: 0``): protobuf's Python
    messages hand back the number."""
    return str(message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(message, field)].name)
