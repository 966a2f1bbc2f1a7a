"""Running one spec operation on a net: by name with keyword fields (the Python API),
or with a message from a spec file (the runner). The operations and their fields come
from the schema's ``Edit`` message, so a new operation needs no table here."""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import json_format

from surgery import ops
from surgery.errors import SpecError, did_you_mean
from surgery.ir import Net
from surgery.ops.base import Action, OpContext
from surgery.spec import spec_class


@cache
def edit_messages() -> dict[str, type]:
    """Each operation's name (a field of ``Edit``'s ``op`` oneof) and its message class."""
    oneof = spec_class("Edit").DESCRIPTOR.oneofs_by_name["op"]
    return {field.name: spec_class(field.message_type.name) for field in oneof.fields}


def edit(net: Net, op: str, *, seed: int = 0, **fields: Any) -> list[Action]:
    """Apply one spec operation by name, with the spec's fields as keyword arguments.

    The fields go through the same schema as spec files (unknown names are rejected).
    If the operation fails, the net is left exactly as it was.

    Example:
        >>> surgery.edit(net, "lr", match=["features.*"], lr_mult=0)
    """
    messages = edit_messages()
    if op not in messages:
        raise SpecError(
            f"unknown operation {op!r}", fix=did_you_mean(op, messages) or f"operations: {', '.join(messages)}"
        )
    message = messages[op]()
    try:
        json_format.ParseDict({k: v for k, v in fields.items() if v is not None}, message)
    except json_format.ParseError as error:
        raise SpecError(f"{op}: {error}") from None
    return run_edit(net, op, message, OpContext(seed))


def run_edit(net: Net, op: str, message: Any, ctx: OpContext) -> list[Action]:
    """Run one operation as a transaction: on error the net is unchanged. A layer
    downstream that no longer fits (e.g. after an ``insert``) fails here, so the error
    belongs to this edit."""
    with net.transaction():
        actions = ops.op_function(op)(net, message, ctx)
        net.ensure_shapes()
        return actions


__all__ = ["edit", "edit_messages", "run_edit"]
