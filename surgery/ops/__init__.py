"""Spec operations, one module each, registered by name on import."""

from surgery.ops import append, classifier, cut, insert, lr, remove  # noqa: F401  (registers)
from surgery.ops.base import Action, OpContext, op_function, register_op, registered_ops

__all__ = ["Action", "OpContext", "op_function", "register_op", "registered_ops"]
