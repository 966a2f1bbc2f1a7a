"""The layer-type registry: one :class:`LayerType` subclass per file, registered by name.

Importers and emitters dispatch through this registry and hold no per-type ``if``
chains. A layer type owns everything about its layers: hyper-parameter defaults,
parameter-blob shapes, shape inference, its PyTorch module, and how importers
recognise it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from surgery.errors import ModelFormatError, ShapeError, unsupported_in_caffe, unsupported_in_onnx
from surgery.ir import Layer, Shape
from surgery.ir.kinds import add_kind, all_kinds, kind_of
from surgery.lazy_torch import fx, nn, resolve, torch


@dataclass(frozen=True)
class ModuleRecipe:
    """A module class and the keyword arguments that construct it.

    The class is a ``torch.nn`` class or one of ``surgery.layers.runtime``'s, so
    the generated standalone source can construct it with only torch installed.
    """

    cls: type[nn.Module]
    kwargs: dict[str, Any]

    def build(self, device: str | torch.device = "meta") -> nn.Module:
        with torch.device(device):
            return self.cls(**self.kwargs)


class LayerType:
    """Base class of a layer type. Subclasses set ``name`` and override what applies.

    Class attributes:
        name: the registered type name (Caffe's, e.g. ``"Convolution"``).
        torch_modules: ``nn.Module`` classes the torch importer maps to this type, by
            dotted name (``"torch.nn.ReLU"``: naming them imports no torch).
        torch_functions: callables by dotted name (``"torch.relu"``), method names
            (``"flatten"``) and other callables it maps to this type.
        blob_roles: parameter-blob roles in storage order (``("weight", "bias")``).
        passes_resize: a channel-count change flows through (see the attribute).
        runs_in_place / fresh_output: when the torch emitter may run an activation in place.
    """

    name: ClassVar[str] = ""
    torch_modules: ClassVar[tuple[str, ...]] = ()
    torch_functions: ClassVar[tuple[Any, ...]] = ()
    #: The importer traces this type's calls at two batch sizes and asks
    #: :meth:`import_torch_call_traced` (not :meth:`import_torch_call`), also for calls whose
    #: sizes follow the batch (``x.view(x.size(0), -1)``); the layer must give the traced
    #: shapes at both batch sizes.
    reads_traced_shapes: ClassVar[bool] = False
    #: ``import_torch_call`` is handed :data:`~surgery.layers.opaque_call.TRAINING` where the
    #: model passed its own ``self.training`` (True in the train trace, False in the eval one).
    reads_mode_flags: ClassVar[bool] = False
    blob_roles: ClassVar[tuple[str, ...]] = ()
    #: A change in the input's channel count flows through this layer to its consumers
    #: (elementwise, per-channel or flattening layers); its own per-channel blobs, if
    #: any, are resized with it. Resize propagation walks through these.
    passes_resize: ClassVar[bool] = False
    #: Its torch module takes ``inplace=True`` (an activation that may overwrite its input).
    runs_in_place: ClassVar[bool] = False
    #: Its torch output is a new tensor (never a view of an input) that its own backward
    #: does not read, so an activation reading only it may overwrite it in place.
    fresh_output: ClassVar[bool] = False

    # ------------------------------------------------------------- shapes
    def infer_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> list[Shape | None]:
        """Output shapes from input shapes. Default: one output shaped like input 0."""
        self.expect_inputs(layer, in_shapes, 1)
        return [in_shapes[0]]

    def param_shapes(self, layer: Layer, in_shapes: list[Shape | None]) -> dict[str, Shape]:
        """Shapes of the blobs a new layer of this type needs, from its input shapes."""
        return {}

    def default_filler(self, layer: Layer, role: str) -> dict[str, Any]:
        """The filler for a new blob of ``role`` (a FillerParameter as a dict).

        Weights default to xavier (never Caffe's silent constant 0); biases to 0.
        """
        if role == "bias":
            return {"type": "constant", "value": 0.0}
        return {"type": "xavier"}

    def adjust_default_fill(self, params: dict[str, Any], role: str, tensor: torch.Tensor) -> torch.Tensor:
        """The values of a new blob filled by the type's default filler, adjusted (an
        LSTM's forget-gate bias starts at 1). Not applied when the spec names a filler."""
        return tensor

    def default_fill_note(self, role: str) -> str:
        """What :meth:`adjust_default_fill` does to ``role``, for the report ("" = nothing)."""
        return ""

    def torch_output_structure(self, layer: Layer) -> Any:
        """For a module returning a tuple (``nn.LSTM``'s ``(y, (h, c))``): the nested
        tuple of output indices that mirrors it, so the torch importer maps each
        ``result[i]`` to an output. None: the module returns one tensor."""
        return None

    def output_is_fresh(self, layer: Layer) -> bool:
        """Whether this layer's torch output may be overwritten in place (``fresh_output``)."""
        return self.fresh_output

    def trainable_roles(self, layer: Layer) -> tuple[str, ...]:
        """Blob roles that are parameters (the rest are buffers)."""
        return tuple(role for role in layer.blobs)

    # -------------------------------------------------------------- torch
    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe | None:
        """How to construct the ``nn.Module`` computing this layer (its parameters are
        attached afterwards from the blobs, without a copy), or None when the layer is
        emitted as function calls instead (see :meth:`emit_fx`)."""
        return None

    def emit_fx(self, layer: Layer, graph: fx.Graph, inputs: list[fx.Node], in_shapes: list[Shape | None]) -> fx.Node:
        """Add the node(s) computing this layer to ``graph``; returns its output node.

        Default: call the layer's module, registered under the layer's name (or under
        ``extra["module_path"]`` when the layer calls a module another layer owns).
        """
        return graph.call_module(layer.extra.get("module_path", layer.name), tuple(inputs))

    def import_torch_module(self, module: Any) -> dict[str, Any] | None:
        """Hyper-parameters of a layer made from ``module`` (torch importer hook), or None
        when this module (a padding mode, a flag) stays an opaque layer. ``module`` is an
        instance of one of :attr:`torch_modules` (each type annotates its own: Any here)."""
        raise NotImplementedError

    def import_torch_module_call(self, module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        """Hyper-parameters of a layer made from one traced call of ``module``, or None
        when the call stays an opaque module. ``args`` holds ``None`` where a tensor stands;
        the layer's inputs are the call's tensors in order. Default: a call on one tensor
        without keyword arguments (:meth:`import_torch_module` decides)."""
        if len(args) != 1 or kwargs:
            return None
        return self.import_torch_module(module)

    #: The layer's blobs include its module's submodules' parameters under dotted roles
    #: (``out_proj.weight``), as the module's own ``state_dict`` names them.
    torch_nested_blobs: ClassVar[bool] = False

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        """Hyper-parameters of a layer made from a traced call, or None when this call
        (e.g. ``torch.flatten`` with unusual arguments) is not one this type can take.
        ``args`` holds ``None`` where a tensor input stands."""
        raise NotImplementedError

    def import_torch_call_shaped(
        self, target: Any, args: tuple, kwargs: dict, in_shapes: list[Shape | None]
    ) -> tuple[dict[str, Any] | None, Any]:
        """:meth:`import_torch_call` for the torch importer, which also knows the input
        shapes: ``(params or None, output structure)``. The structure is None for a call
        returning one tensor, else the tuple of output indices it returns (``x.chunk(2)``
        gives ``(0, 1)``), like :meth:`torch_output_structure`. Override it when the
        hyper-parameters or the number of outputs depend on the input shapes."""
        return self.import_torch_call(target, args, kwargs), None

    def import_torch_call_traced(self, target: Any, args: tuple, kwargs: dict, traced: Any) -> dict[str, Any] | None:
        """Hyper-parameters of a layer made from a traced call, read off ``traced`` (the
        call's :class:`~surgery.layers.meta_run.TracedShapes`), or None. Asked only of types
        that set :attr:`reads_traced_shapes`. ``args`` holds ``None`` where a tensor or a
        size that follows the batch stands."""
        return None

    #: Functional calls (``"torch.nn.functional.linear"``) this type takes when their weights
    #: are one module's own parameters (timm's Linear, Conv2dSame and BatchNormAct2d
    #: subclasses call them).
    torch_functionals: ClassVar[tuple[str, ...]] = ()

    def import_torch_functional(
        self, target: Any, args: tuple, kwargs: dict, module: nn.Module
    ) -> dict[str, Any] | None:
        """Hyper-parameters of a layer made from a functional call on ``module``'s own
        weights, or None when the call is not one this type can take (``args`` holds
        ``None`` where a tensor stands). The layer is named after the module and holds
        its weights."""
        raise NotImplementedError

    # --------------------------------------------------------------- onnx
    #: ONNX operator types the ONNX importer maps to this layer type.
    onnx_ops: ClassVar[tuple[str, ...]] = ()

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        """Write this layer's ONNX node(s) into an ``OnnxWriter`` (node names derive
        from the layer's name, initializer names from ``<layer>.<role>``)."""
        raise unsupported_in_onnx(layer)

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        """The layer for one ONNX node (its inputs already resolved by ``reader``), or
        None when this node's attributes are outside what the type can express."""
        raise NotImplementedError

    # -------------------------------------------------------------- caffe
    #: The LayerParameter field holding this type's hyper-parameters ("convolution_param").
    caffe_param_field: ClassVar[str | None] = None
    #: Layers of this type can be written in Caffe syntax (a spec's ``layer { }``, a
    #: prototxt). False for types whose hyper-parameters have no Caffe field: they come
    #: only from imported models.
    caffe_syntax: ClassVar[bool] = True

    def from_caffe(self, param: Any) -> dict[str, Any]:
        """Hyper-parameters from this type's Caffe ``*_param`` message (None when the
        type has none). Spec files write new layers this way."""
        return {}

    def caffe_fillers(self, param: Any) -> dict[str, Any]:
        """Fillers a Caffe ``*_param`` message names, by blob role (FillerParameter messages)."""
        return {}

    def to_caffe(self, layer: Layer, writer: Any) -> None:
        """Write this layer's Caffe LayerParameter(s) into a ``CaffeWriter``."""
        raise unsupported_in_caffe(layer)

    # -------------------------------------------------------------- helpers
    def expect_inputs(self, layer: Layer, in_shapes: list[Shape | None], count: int) -> None:
        if len(in_shapes) != count:
            raise ShapeError(f"takes {count} input(s), got {len(in_shapes)}", subject=layer.name)


def known(layer: Layer, in_shapes: Sequence[Shape | None], index: int = 0) -> Shape:
    """Input ``index``'s shape, which this layer needs as a tensor's: a ShapeError naming
    the layer when it is unknown (a non-tensor value, or a layer whose shape is not set)."""
    shape = in_shapes[index] if index < len(in_shapes) else None
    if shape is None:
        raise ShapeError(f"input {index} has no known tensor shape", subject=layer.name)
    return shape


def all_known(layer: Layer, in_shapes: Sequence[Shape | None]) -> list[Shape]:
    """Every input's shape (see :func:`known`)."""
    return [known(layer, in_shapes, index) for index in range(len(in_shapes))]


def register_layer(cls: type[LayerType]) -> type[LayerType]:
    """Class decorator: register a layer type under ``cls.name``. Twice is an error."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    add_kind(cls.name, cls())
    return cls


def layer_type(name: str) -> LayerType:
    """The registered layer type called ``name``."""
    return kind_of(name)


def registered_types() -> dict[str, LayerType]:
    return all_kinds()


def torch_module_map() -> dict[type, LayerType]:
    """``nn.Module`` class -> layer type, for the torch importer."""
    return {resolve(cls): kind for kind in all_kinds().values() for cls in kind.torch_modules}


def _calls_to_kinds(attribute: str) -> dict[Any, list[LayerType]]:
    """Each callable a layer type lists under ``attribute`` -> the types listing it."""
    found: dict[Any, list[LayerType]] = {}
    for kind in all_kinds().values():
        for fn in getattr(kind, attribute):
            found.setdefault(resolve(fn), []).append(kind)
    return found


def torch_functional_map() -> dict[Any, list[LayerType]]:
    """Functional call -> layer types taking it on a module's own weights, for the torch importer."""
    return _calls_to_kinds("torch_functionals")


def torch_function_map() -> dict[Any, list[LayerType]]:
    """Traced callable / method name -> candidate layer types, for the torch importer."""
    return _calls_to_kinds("torch_functions")


def check_param(ok: bool, message: str, fix: str | None = None) -> None:
    """Refuse a hyper-parameter outside its range. Layer types call this in
    ``from_caffe`` (spec files and prototxts): a value torch or ONNX would reject, or
    divide by, is caught where it is written."""
    if not ok:
        raise ModelFormatError(message, fix=fix)


def check_axis(axis: int, shape: Shape | None) -> int:
    """``axis`` (negative counts from the end) as an index into ``shape``; a ShapeError
    when the input has no such axis."""
    rank = len(shape) if shape is not None else 0
    if not -rank <= axis < rank:
        raise ShapeError(
            f"axis {axis} is out of range for a {rank}-D input {shape}", fix=f"use an axis in [{-rank}, {rank - 1}]"
        )
    return axis % rank


def pair(value: Any) -> tuple[int, int]:
    """A 2-tuple from an int or a sequence of one or two ints."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return values * 2 if len(values) == 1 else values  # type: ignore[return-value]


class ActivationType(LayerType):
    """A parameter-free elementwise layer computed by one torch module class and one
    ONNX operator."""

    #: The torch module class by dotted name (``"torch.nn.Sigmoid"``).
    module_class: ClassVar[str]
    onnx_op: ClassVar[str]
    #: The first ONNX opset with ``onnx_op``; below it the layer is written as its
    #: formula (:meth:`to_onnx_formula`), the last node carrying the layer's name.
    onnx_native_opset: ClassVar[int | None] = None
    passes_resize = True

    def to_onnx(self, layer: Layer, writer: Any) -> None:
        if self.onnx_native_opset is not None and writer.opset < self.onnx_native_opset:
            self.to_onnx_formula(layer, writer)
        else:
            writer.node(
                self.onnx_op, list(layer.inputs), list(layer.outputs), layer.name, **self.onnx_attributes(layer)
            )

    def onnx_attributes(self, layer: Layer) -> dict[str, Any]:
        """Attributes of the native ONNX operator."""
        return {}

    def to_onnx_formula(self, layer: Layer, writer: Any) -> None:
        """The activation written with older operators (types with ``onnx_native_opset``)."""
        raise unsupported_in_onnx(layer, f"needs opset {self.onnx_native_opset}")

    def from_onnx(self, node: Any, reader: Any) -> Layer | None:
        return reader.layer(node, self.name, {})

    def module_recipe(self, layer: Layer, in_shapes: list[Shape | None]) -> ModuleRecipe:
        return ModuleRecipe(resolve(self.module_class), {})

    def import_torch_module(self, module: Any) -> dict[str, Any]:
        return {}

    def import_torch_call(self, target: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        return {}
