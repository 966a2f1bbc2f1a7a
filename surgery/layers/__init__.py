"""Layer types, one module each, registered by name on import.

Adding a type is adding one file with a :func:`register_layer` class and importing it
here.
"""

from surgery.layers import (  # noqa: F401  (importing registers the types)
    adaptive_pooling,
    batch_norm,
    bias,
    clip,
    concat,
    constant,
    convolution,
    deconvolution,
    dropout,
    eltwise,
    flatten,
    gelu,
    gru,
    hard_sigmoid,
    hard_swish,
    inner_product,
    input,
    layer_norm,
    lrn,
    lstm,
    matmul,
    mish,
    opaque,
    opaque_call,
    pad,
    permute,
    pooling,
    power,
    prelu,
    relu,
    reshape,
    rnn,
    scale,
    sigmoid,
    silu,
    slice,
    softmax,
    tanh,
    temporal_pooling,
    time_fold,
)
from surgery.layers.registry import (
    LayerType,
    ModuleRecipe,
    layer_type,
    register_layer,
    registered_types,
    torch_function_map,
    torch_functional_map,
    torch_module_map,
)

__all__ = [
    "LayerType",
    "ModuleRecipe",
    "layer_type",
    "register_layer",
    "registered_types",
    "torch_function_map",
    "torch_functional_map",
    "torch_module_map",
]
