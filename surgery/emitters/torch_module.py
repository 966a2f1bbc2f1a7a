"""PyTorch emitter: the IR becomes Python source for an ``nn.Module``, generated with
torch.fx, plus the weights.

One code path serves both uses: the in-memory model is an instance of the generated
class, executed from the same source that a saved folder holds, so what you test in
memory is what loads from disk. Submodules carry the layer names (torch module paths
stay dotted), so an unedited torchvision net keeps its exact state_dict keys; a name that
is not plain (quotes, spaces, keywords, ``..``) gets a plain attribute path instead
(:mod:`surgery.emitters.torch_names`), and names reach the source only as literals.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import operator
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from surgery.emitters.files import FileLog, output_file, write_bytes
from surgery.emitters.torch_names import module_paths
from surgery.errors import ModelFormatError
from surgery.ir import Layer, Net
from surgery.layers import ModuleRecipe, layer_type
from surgery.layers import runtime as torch_runtime
from surgery.layers.time_fold import lower_time
from surgery.lazy_torch import fx, nn, torch
from surgery.solver import rates as solver_rates
from surgery.solver import runtime as solver_runtime

#: the line above which a solver module's imports end (its copied code starts below it)
COPIED_FROM_HERE = "# --- copied into a generated model.py from here on ---\n"

CLASS_NAME = "SurgeryModel"
WEIGHTS_FILE = "weights.pt"
OPAQUE_FILE = "opaque_modules.pt"
SOURCE_FILE = "model.py"

_FX_DEFAULT_GLOBALS = {"torch", "inf", "nan", "NoneType", "device", "fx_pytree", "pytree"}


@dataclass
class TorchProgram:
    """Everything needed to build the model: generated source, and per-layer modules."""

    source: str
    recipes: dict[str, ModuleRecipe]
    opaque: dict[str, nn.Module]  # by attribute path
    paths: dict[str, str]  # module-owning layer name -> attribute path in the model


def _phase_layers(net: Net, phase: str) -> list[Layer]:
    """The layers computed in ``phase``: all of them in train, the ancestors of the
    deploy outputs in eval (train-only branches left out)."""
    layers = list(net.layers())
    if phase == "train":
        return layers
    needed: set[str] = set()
    for blob in net.outputs_for(None):
        producer = net.producer(blob).name
        needed |= net.ancestors(producer) | {producer}
    return [layer for layer in layers if layer.name in needed]


class _PathGraph(fx.Graph):
    """An fx graph whose module references use the modules' attribute paths, mapped
    before fx names the node after them (a variable name never comes from raw input)."""

    def __init__(self, paths: dict[str, str]) -> None:
        super().__init__()
        self.paths = paths

    def create_node(self, op, target, args=None, kwargs=None, name=None, type_expr=None):
        if op == "call_module" or (op == "get_attr" and target != "training"):  # the model's own mode flag
            target = _attribute_path(target, self.paths)
        return super().create_node(op, target, args, kwargs, name, type_expr)


def _build_graph(net: Net, layers: list[Layer], outputs: list[str], paths: dict[str, str]) -> fx.Graph:
    graph = _PathGraph(paths)
    shapes = net.shapes()
    values: dict[str, fx.Node] = {}
    for layer in layers:
        kind = layer_type(layer.type)
        inputs = [values[blob] for blob in layer.inputs]
        result = kind.emit_fx(layer, graph, inputs, [shapes[b] for b in layer.inputs])
        if len(layer.outputs) == 1:
            values[layer.outputs[0]] = result
        else:
            for index, blob in enumerate(layer.outputs):  # a tuple of nodes, or one node to index
                values[blob] = (
                    result[index]
                    if isinstance(result, tuple)
                    else graph.call_function(operator.getitem, (result, index))
                )
    if len(outputs) == 1:
        graph.output(values[outputs[0]])
    else:
        graph.output({blob: values[blob] for blob in outputs})
    graph.lint()
    return graph


def _attribute_path(target: str, paths: dict[str, str]) -> str:
    """The attribute path of a module (or of a tensor inside one) named by layer name."""
    if target in paths:
        return paths[target]
    owner = max((name for name in paths if target.startswith(name + ".")), key=len, default=None)
    if owner is None:
        raise RuntimeError(f"no layer owns the module {target!r}")
    return paths[owner] + target[len(owner) :]


def _method_source(graph: fx.Graph, method: str, imports: dict[str, str]) -> str:
    code = graph.python_code(root_module="self")
    for name, value in code.globals.items():
        if name in _FX_DEFAULT_GLOBALS or name in imports:
            continue
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None)
        if module is None or qualname is None or "<" in qualname:
            raise ValueError(f"cannot emit a reference to {value!r} in generated code")
        if module == "builtins":
            imports[name] = f"{name} = {qualname}"
        else:
            head, _, rest = qualname.partition(".")
            imports[name] = (
                f"from {module} import {head} as {name}"
                if not rest
                else (f"import {module} as _m_{name}\n{name} = _m_{name}.{qualname}")
            )
    body = code.src.strip("\n")
    body = body.replace("def forward(self", f"def {method}(self", 1)
    return "\n".join("    " + line if line.strip() else "" for line in body.splitlines())


def _recipe_source(recipe: ModuleRecipe) -> str:
    cls = recipe.cls
    if cls.__module__.startswith("torch.nn"):
        ref = f"nn.{cls.__name__}"
    elif cls.__module__ == torch_runtime.__name__:
        ref = cls.__name__
    else:
        raise ValueError(f"module class {cls} is neither torch.nn nor surgery's runtime")
    args = ", ".join(f"{key}={_literal(value)}" for key, value in recipe.kwargs.items())
    return f"{ref}({args})"


def _literal(value: Any) -> str:
    """``repr`` of a constructor argument, refusing anything whose repr is not a plain
    literal (an object's repr could be any text)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            _literal(item)
    elif value is not None and type(value) not in (bool, int, float, str):
        raise ValueError(f"cannot write a {type(value).__name__} into generated source")
    return repr(value)


def _runtime_source() -> str:
    """The model runtime and the Caffe solver runtime, without their imports."""
    model = inspect.getsource(torch_runtime).split("from torch import nn\n", 1)[1].strip("\n")
    rates, solver = (
        inspect.getsource(m).split(COPIED_FROM_HERE, 1)[1].strip("\n") for m in (solver_rates, solver_runtime)
    )
    return f"{model}\n\n\n{rates}\n\n\n{solver}"


def _may_run_in_place(net: Net, layer: Layer) -> bool:
    """An activation may overwrite its input when nothing else reads that input (no
    other layer, not a net output) and its producer made it fresh (not a view, not the
    user's input tensor) without needing it for its own backward. Activation memory
    then matches eager models written with ``inplace=True`` (torchvision's)."""
    if len(layer.inputs) != 1:
        return False
    blob = layer.inputs[0]
    producer = net.producer(blob)
    return (
        layer_type(producer.type).output_is_fresh(producer)
        and len(net.consumers(blob)) == 1
        and blob not in net.outputs
    )


def _recipes(net: Net) -> tuple[dict[str, ModuleRecipe], dict[str, nn.Module]]:
    """The module recipe of every layer that owns a module, and the opaque modules."""
    shapes = net.shapes()
    recipes: dict[str, ModuleRecipe] = {}
    opaque: dict[str, nn.Module] = {}
    callers: dict[str, list[Layer]] = {}  # a module called by several layers (resnet's relu)
    for layer in net.layers():
        callers.setdefault(layer.extra.get("module_path", layer.name), []).append(layer)
    for layer in net.layers():
        if "module_path" in layer.extra:
            continue  # calls a module another layer owns
        if layer.type == "Opaque":
            opaque[layer.name] = layer.extra["module"]
            continue
        kind = layer_type(layer.type)
        recipe = kind.module_recipe(layer, [shapes[b] for b in layer.inputs])
        if recipe is not None and kind.runs_in_place and all(_may_run_in_place(net, c) for c in callers[layer.name]):
            recipe = ModuleRecipe(recipe.cls, {**recipe.kwargs, "inplace": True})
        if recipe is not None:
            recipes[layer.name] = recipe
    return recipes, opaque


def generate(net: Net) -> TorchProgram:
    """Generate the model source for ``net``. Reads no weights.

    Names from the net (layers, blobs, the net's own) reach the source only as ``repr``
    literals; modules sit at the plain attribute paths of :func:`module_paths`.
    """
    net = lower_time(net)  # a clip model: per-frame layers on N*T frames
    recipes, opaque = _recipes(net)
    paths = module_paths(name for name in net.layer_names() if name in recipes or name in opaque)

    train_layers, eval_layers = _phase_layers(net, "train"), _phase_layers(net, "eval")
    train_outputs, eval_outputs = net.outputs_for("train"), net.outputs_for(None)
    imports: dict[str, str] = {}
    same = [x.name for x in train_layers] == [x.name for x in eval_layers] and train_outputs == eval_outputs
    if same:
        methods = [_method_source(_build_graph(net, train_layers, train_outputs, paths), "forward", imports)]
    else:
        methods = [
            "    def forward(self, *inputs):\n"
            "        if self.training:\n"
            "            return self._forward_train(*inputs)\n"
            "        return self._forward_eval(*inputs)",
            _method_source(_build_graph(net, train_layers, train_outputs, paths), "_forward_train", imports),
            _method_source(_build_graph(net, eval_layers, eval_outputs, paths), "_forward_eval", imports),
        ]

    lr_mults = {}
    for layer in net.layers():
        for role, blob in layer.blobs.items():
            if blob.trainable:
                lr_mults[f"{paths[layer.name]}.{role}"] = (float(blob.lr_mult), float(blob.decay_mult))

    init_lines = []
    for layer in net.layers():
        if layer.name in recipes:
            init_lines.append(f"        self._add_layer({paths[layer.name]!r}, {_recipe_source(recipes[layer.name])})")
        elif layer.name in opaque:
            init_lines.append(f"        self._add_layer({paths[layer.name]!r}, _opaque_module({paths[layer.name]!r}))")

    source = _TEMPLATE.format(
        net_name=repr(net.name),
        runtime=_runtime_source(),
        imports="\n".join(imports.values()),
        class_name=CLASS_NAME,
        lr_mults=_format_dict(lr_mults),
        loss_weights=_format_dict({blob: float(weight) for blob, weight in net.loss_weights.items()}),
        solver=_format_dict(_solver_entries(net.solver)) if net.solver is not None else "None",
        preprocessing=_format_dict(net.preprocess.to_dict() if net.preprocess is not None else {}),
        module_paths=_format_dict({name: path for name, path in paths.items() if name != path}),
        outputs=repr({"train": list(train_outputs), "eval": list(eval_outputs)}),
        init="\n".join(init_lines) or "        pass",
        methods="\n\n".join(methods),
        weights=WEIGHTS_FILE,
        opaque=OPAQUE_FILE,
    )
    return TorchProgram(source=source, recipes=recipes, opaque={paths[n]: m for n, m in opaque.items()}, paths=paths)


def _solver_entries(settings: dict[str, Any]) -> dict[str, Any]:
    """What the update reads: the report-only parts (kept fields, notes) stay out."""
    return {key: value for key, value in settings.items() if key not in ("kept", "notes")}


def _format_dict(mapping: dict[str, Any]) -> str:
    if not mapping:
        return "{}"
    lines = [f"        {key!r}: {value!r}," for key, value in mapping.items()]
    return "{\n" + "\n".join(lines) + "\n    }"


_TEMPLATE = '''"""Generated by surgery (the net's name is NET_NAME below). Loads with only torch installed:

    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("model", "path/to/folder/model.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    model = module.load()                     # weights from the same folder
    optimizer = torch.optim.SGD(model.param_groups(lr=0.01, weight_decay=5e-4), momentum=0.9)
    optimizer, scheduler = model.caffe_solver()  # when the spec names a Caffe solver
"""

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree
from torch import device

inf, nan, NoneType = math.inf, math.nan, type(None)
{imports}

NET_NAME = {net_name}

# ---- surgery runtime (copied from surgery/layers/runtime.py) ----
{runtime}
# ---- end of runtime ----

_OPAQUE_MODULES = {{}}


def _opaque_module(name):
    """A module surgery carries without a layer type; pickled in {opaque}."""
    return _OPAQUE_MODULES[name]


class {class_name}(SurgeryModule):
    LR_MULTS = {lr_mults}
    OUTPUTS = {outputs}
    MODULE_PATHS = {module_paths}
    LOSS_WEIGHTS = {loss_weights}
    SOLVER = {solver}
    PREPROCESSING = {preprocessing}

    def caffe_solver(self, settings=None):
        """The optimizer and LR scheduler of the spec's Caffe solver (or of ``settings``,
        a dict like SOLVER), updating exactly as Caffe does: per Caffe iteration, call
        ``backward()`` on each of the iter_size micro-batches' losses (not divided),
        then ``optimizer.step()`` and ``scheduler.step()``."""
        settings = settings if settings is not None else self.SOLVER
        if settings is None:
            raise ValueError("this model was emitted from a spec without a solver {{ }}: pass settings")
        return caffe_solver(self, settings)

    def __init__(self):
        super().__init__()
{init}

{methods}


def load(folder=None, map_location="cpu"):
    """Build the model and load its weights from ``folder`` (default: this file's folder)."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    opaque_file = folder / "{opaque}"
    if opaque_file.exists():
        _OPAQUE_MODULES.update(torch.load(opaque_file, map_location=map_location, weights_only=False))
    with torch.device("meta"):
        model = {class_name}()
    state = torch.load(folder / "{weights}", map_location=map_location, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [key for key in missing if not any(key.startswith(name + ".") for name in _OPAQUE_MODULES)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the model: missing {{missing}}, unexpected {{unexpected}}")
    model.apply_lr_mults()
    return model
'''

_counter = itertools.count()


def exec_program(program: TorchProgram) -> types.ModuleType:
    """Execute generated source as a fresh module (registered in sys.modules, so the
    model pickles and `inspect` finds its source)."""
    digest = hashlib.sha1(program.source.encode()).hexdigest()[:12]
    module = types.ModuleType(f"surgery_generated_{digest}_{next(_counter)}")
    module.__file__ = f"<surgery generated {digest}>"
    sys.modules[module.__name__] = module
    module.__dict__["_OPAQUE_MODULES"] = {}
    # The source is surgery's own: names from model files reach it only as repr() literals.
    exec(compile(program.source, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


def _attach_blobs(model: nn.Module, net: Net, paths: dict[str, str], copy_weights: bool) -> None:
    """Give every module its tensors from the blobs (roles may be dotted inside opaque
    modules). Parameters get ``requires_grad`` from the blob's lr_mult."""
    for layer in net.layers():
        for role, blob in layer.blobs.items():
            owner_path, _, leaf = f"{paths[layer.name]}.{role}".rpartition(".")
            owner = model.get_submodule(owner_path)
            data = blob.data.clone() if copy_weights else blob.data
            if leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(data, requires_grad=not blob.frozen)
            elif leaf in owner._buffers:
                owner._buffers[leaf] = data
            else:
                raise RuntimeError(f"{layer.type} module of {layer.name!r} has no parameter or buffer {role!r}")
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_meta:
            layer_name, _, role = name.rpartition(".")
            if role == "num_batches_tracked":
                model.get_submodule(layer_name)._buffers[role] = torch.zeros((), dtype=torch.long)
            else:
                raise RuntimeError(f"no weights for {name!r}")


def emit_torch(net: Net, copy_weights: bool = True) -> nn.Module:
    """Build the emitted model in memory.

    Args:
        net: the (edited) net.
        copy_weights: copy blob data into the model. False shares storage with the
            source tensors (no copy: what file-to-file ``apply`` uses).

    Returns:
        An instance of the generated ``SurgeryModel`` (an ``nn.Module`` subclass of
        :class:`~surgery.layers.runtime.SurgeryModule`), in train mode.
    """
    program = generate(net)
    module = exec_program(program)
    # Opaque modules are copied (cheap when on the meta device) and get their tensors from
    # the blobs like every other module, so the source model is never touched.
    opaque = {name: copy.deepcopy(m) for name, m in program.opaque.items()}
    module._OPAQUE_MODULES.update(opaque)
    with torch.device("meta"):
        model = getattr(module, CLASS_NAME)()
    for name, m in opaque.items():
        model._add_layer(name, m)
    _attach_blobs(model, net, program.paths, copy_weights)
    model.apply_lr_mults()
    model.train()
    model.surgery_source = program.source
    return model


def save_torch_folder(net: Net, folder: Path, log: FileLog | None = None) -> Path:
    """Write the standalone folder: ``model.py`` (generated source), ``weights.pt``
    (the state_dict) and, when the net has opaque modules, ``opaque_modules.pt``.
    Each file is written atomically; ``log`` records their sha256 and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    model: Any = emit_torch(net, copy_weights=False)  # the generated class: its attributes are its own
    write_bytes(folder / SOURCE_FILE, model.surgery_source.encode(), log)
    opaque = {
        model.MODULE_PATHS.get(layer.name, layer.name): model.layer_module(layer.name)
        for layer in net.layers()
        if layer.type == "Opaque" and "module_path" not in layer.extra
    }
    # Opaque modules' tensors live in their pickle, not in weights.pt.
    state = {
        name: tensor.detach()
        for name, tensor in model.state_dict().items()
        if not any(name.startswith(prefix + ".") for prefix in opaque)
    }
    with output_file(folder / WEIGHTS_FILE, log, stable=state.values()) as out:
        torch.save(state, cast(IO[bytes], out))  # a file-like writer that hashes what passes
    if opaque:
        with output_file(folder / OPAQUE_FILE, log) as out:
            torch.save(opaque, cast(IO[bytes], out))
    return folder


def load_torch_folder(folder: str | Path, map_location: str = "cpu") -> nn.Module:
    """Load a folder written by :func:`save_torch_folder` (the same as running its
    ``model.py``'s ``load()``)."""
    import importlib.util

    folder = Path(folder)
    name = f"surgery_loaded_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, folder / SOURCE_FILE)
    if spec is None or spec.loader is None:
        raise ModelFormatError(f"{str(folder / SOURCE_FILE)!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.load(folder, map_location=map_location)


__all__ = ["emit_torch", "generate", "load_torch_folder", "save_torch_folder"]
