"""Spec operations, one module each, registered by name on import."""

from surgery.ops import (  # noqa: F401  (importing registers the operations)
    append,
    classifier,
    collapse,
    cut,
    eltwise_insert,
    fc_to_conv,
    fold_batchnorm,
    insert,
    lora,
    lr,
    remove,
    replace,
    sequence,
)
from surgery.ops.base import Action, OpContext, op_function, register_op, registered_ops

__all__ = ["Action", "OpContext", "op_function", "register_op", "registered_ops"]
