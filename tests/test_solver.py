"""Caffe solvers: the reference's hand-checked vectors, multi-step runs of every type and
policy against an independent numpy re-implementation of Caffe's update, and the
solver file's checks (located errors, exit 2)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import SpecError
from surgery.solver.caffe import read_solver, solver_settings
from surgery.solver.runtime import CaffeRate, CaffeSolver, caffe_rate

BASE = {"type": "SGD", "lr_policy": "fixed", "base_lr": 0.1, "weight_decay": 0.0, "regularization_type": "L2",
        "clip_gradients": -1.0, "iter_size": 1, "max_iter": 0, "momentum": 0.0}  # fmt: skip


def _settings(**changes) -> dict:
    return {**BASE, **changes}


def _solver(settings: dict, groups: list[dict]) -> tuple[CaffeSolver, CaffeRate]:
    keys = ("type", "momentum", "momentum2", "delta", "rms_decay", "regularization_type", "clip_gradients", "iter_size")
    optimizer = CaffeSolver(groups, **{k: settings[k] for k in keys if k in settings})
    return optimizer, CaffeRate(optimizer, settings)


def _param(*values: float) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _iterate(optimizer, scheduler, grads_at, iterations: int) -> list[list[float]]:
    """Set each parameter's gradient to ``grads_at(iteration, param)``, step both."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    trace = []
    for iteration in range(iterations):
        for p in params:
            grad = grads_at(iteration, p)
            p.grad = None if grad is None else grad.clone()
        optimizer.step()
        scheduler.step()
        trace.append([float(v) for p in params for v in p.detach().flatten()])
    return trace


# ---------------------------------------------------------- the reference's vectors
def test_a_sgd_keeps_the_rate_inside_the_history_across_a_step_change() -> None:
    """Vector A: loss = w, g = 1; step policy halves... by 10 at iteration 2."""
    w = _param(1.0)
    opt, sched = _solver(_settings(lr_policy="step", gamma=0.1, stepsize=2, momentum=0.9), [{"params": [w]}])
    trace = _iterate(opt, sched, lambda i, p: torch.ones_like(p), 4)
    np.testing.assert_allclose([t[0] for t in trace], [0.9, 0.71, 0.529, 0.3561], atol=1e-7)


def test_b_multipliers_and_weight_decay() -> None:
    """Vector B: loss = (w^2 + b^2)/2; weight lr_mult 1 decay_mult 1, bias 2 / 0."""
    w, b = _param(1.0), _param(1.0)
    settings = _settings(lr_policy="step", gamma=0.1, stepsize=2, momentum=0.9, weight_decay=0.1)
    groups = [{"params": [w], "lr_mult": 1.0, "weight_decay": 0.1}, {"params": [b], "lr_mult": 2.0, "weight_decay": 0}]
    opt, sched = _solver(settings, groups)
    trace = _iterate(opt, sched, lambda i, p: p.detach().clone(), 4)
    expected = [(0.89, 0.8), (0.6931, 0.46), (0.5082659, 0.1448), (0.3363242851, -0.141776)]
    np.testing.assert_allclose(trace, expected, atol=1e-6)


def test_c_nesterov() -> None:
    w = _param(1.0)
    opt, sched = _solver(
        _settings(type="Nesterov", lr_policy="step", gamma=0.1, stepsize=2, momentum=0.9), [{"params": [w]}]
    )
    trace = _iterate(opt, sched, lambda i, p: torch.ones_like(p), 4)
    np.testing.assert_allclose([t[0] for t in trace], [0.81, 0.539, 0.3661, 0.20049], atol=1e-7)


def test_d_adam_places_delta_as_caffe_does() -> None:
    w = _param(0.0)
    settings = _settings(type="Adam", base_lr=0.001, momentum=0.9, momentum2=0.999, delta=1e-8)
    opt, sched = _solver(settings, [{"params": [w]}])
    trace = _iterate(opt, sched, lambda i, p: torch.full_like(p, 1e-8), 3)
    np.testing.assert_allclose([t[0] for t in trace], [-3.065343003e-05, -7.345015850e-05, -1.253535840e-04], rtol=1e-6)


@pytest.mark.parametrize(
    "solver_type,extra,final",
    [
        ("AdaGrad", {"base_lr": 0.1, "delta": 1e-8}, [0.7705532939949525, -1.7705091954819137]),
        ("RMSProp", {"base_lr": 0.1, "rms_decay": 0.98, "delta": 1e-8}, [-0.23565248394061128, -0.7606988963965756]),
        ("AdaDelta", {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}, [0.985292638703874, -1.9852924306211936]),
    ],
)
def test_e_adaptive_solvers(solver_type: str, extra: dict, final: list[float]) -> None:
    w = _param(1.0, -2.0)
    settings = _settings(type=solver_type, lr_policy="step", gamma=0.5, stepsize=2, weight_decay=0.01, **extra)
    opt, sched = _solver(settings, [{"params": [w], "weight_decay": 0.01}])
    trace = _iterate(opt, sched, lambda i, p: p.detach() + 0.5, 5)
    np.testing.assert_allclose(trace[-1], final, rtol=1e-6)


def test_f_clip_runs_on_the_sum_before_normalising() -> None:
    w = _param(0.0, 0.0)
    opt = _solver(_settings(base_lr=1.0, clip_gradients=1.0, iter_size=2), [{"params": [w]}])[0]
    w.grad = torch.tensor([3.0, 0.0], dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    assert w.detach().tolist() == [-0.5, 0.0]


def test_g_a_parameter_without_gradient_still_decays() -> None:
    w = _param(1.0)
    opt, sched = _solver(_settings(momentum=0.9, weight_decay=0.1), [{"params": [w], "weight_decay": 0.1}])
    trace = _iterate(opt, sched, lambda i, p: None, 3)
    np.testing.assert_allclose([t[0] for t in trace], [0.99, 0.9711, 0.944379], atol=1e-7)


@pytest.mark.parametrize(
    "settings,points",
    [
        ({"lr_policy": "step", "base_lr": 0.01, "gamma": 0.1, "stepsize": 100000},
         {99999: 0.01, 100000: 0.001, 449999: 1e-06}),
        ({"lr_policy": "step", "base_lr": 0.01, "gamma": 0.96, "stepsize": 320000},
         {320000: 0.0096, 9999999: 0.00282103126}),
        ({"lr_policy": "poly", "base_lr": 0.01, "power": 0.5, "max_iter": 2400000},
         {1200000: 0.007071067812, 2399999: 6.45935e-06}),
        ({"lr_policy": "inv", "base_lr": 0.01, "gamma": 1e-4, "power": 0.75},
         {1: 0.009999250066, 10000: 0.005946035575}),
        ({"lr_policy": "multistep", "base_lr": 0.01, "gamma": 0.9, "stepvalue": [5000, 7000, 8000, 9000, 9500]},
         {4999: 0.01, 5000: 0.009, 7000: 0.0081, 9500: 0.0059049}),
        ({"lr_policy": "exp", "base_lr": 0.01, "gamma": 0.9999}, {10000: 0.00367799983}),
        ({"lr_policy": "sigmoid", "base_lr": 0.01, "gamma": 0.001, "stepsize": 5000},
         {0: 6.692850924e-05, 5000: 0.005, 10000: 0.009933071491}),
    ],
)  # fmt: skip
def test_h_rates_as_caffe_computes_them_in_float32(settings: dict, points: dict[int, float]) -> None:
    """Vector H: hyperparameters as proto floats hold them (float32), Caffe's arithmetic."""
    f32 = {k: (float(np.float32(v)) if isinstance(v, float) else v) for k, v in settings.items()}
    for iteration, rate in points.items():
        assert caffe_rate(f32, iteration) == pytest.approx(rate, rel=2e-6), iteration


@pytest.mark.parametrize(
    "stepvalue,rates",
    [
        ([3, 3], [1, 1, 1, 0.1, 0.01, 0.01]),
        ([4, 2], [1, 1, 1, 1, 0.1, 0.01]),
        ([1, 2], [1, 0.1, 0.01, 0.01, 0.01, 0.01]),
    ],
)
def test_h_multistep_advances_at_most_once_per_update(stepvalue: list[int], rates: list[float]) -> None:
    """Vector H's multistep table: duplicate or unsorted stepvalues as Caffe steps them
    (torch's MultiStepLR differs); `surgery solver` refuses such lists, the runtime follows Caffe."""
    settings = {"lr_policy": "multistep", "base_lr": 1.0, "gamma": 0.1, "stepvalue": stepvalue}
    assert [caffe_rate(settings, i) for i in range(6)] == pytest.approx(rates, rel=1e-6)


# ------------------------------------------- an independent re-implementation of Caffe
def _oracle_rate(s: dict, it: int) -> float:
    policy = s["lr_policy"]
    if policy == "fixed":
        return s["base_lr"]
    if policy == "step":
        return s["base_lr"] * s["gamma"] ** (it // s["stepsize"])
    if policy == "exp":
        return s["base_lr"] * s["gamma"] ** it
    if policy == "inv":
        return s["base_lr"] * (1 + s["gamma"] * it) ** -s["power"]
    if policy == "multistep":
        step = 0
        for i in range(it + 1):  # Caffe's stateful loop, one call per update
            if step < len(s["stepvalue"]) and i >= s["stepvalue"][step]:
                step += 1
        return s["base_lr"] * s["gamma"] ** step
    if policy == "poly":
        return s["base_lr"] * (1 - it / s["max_iter"]) ** s["power"]
    return s["base_lr"] / (1 + math.exp(-s["gamma"] * (it - s["stepsize"])))


def _oracle(s: dict, w0: list[np.ndarray], mults: list[tuple[float, float]], grads: list[list[np.ndarray]]):
    """sgd_solver.cpp's ApplyUpdate, literally, in float64 numpy."""
    w = [x.copy() for x in w0]
    h = [np.zeros_like(x) for x in w]
    h2 = [np.zeros_like(x) for x in w]
    for it, gs in enumerate(grads):
        rate = _oracle_rate(s, it)
        diffs = [g.copy() for g in gs]
        if s["clip_gradients"] >= 0:
            norm = math.sqrt(sum(float((d**2).sum()) for d in diffs))
            if norm > s["clip_gradients"]:
                diffs = [d * (s["clip_gradients"] / norm) for d in diffs]
        for i, (lr_mult, decay_mult) in enumerate(mults):
            d = diffs[i] / s["iter_size"] if s["iter_size"] != 1 else diffs[i]
            local_decay = s["weight_decay"] * decay_mult
            if local_decay:
                d = d + local_decay * (w[i] if s["regularization_type"] == "L2" else np.sign(w[i]))
            lr = rate * lr_mult
            t = s["type"]
            if t in ("SGD", "Nesterov"):
                prev = h[i].copy()
                h[i] = s["momentum"] * h[i] + lr * d
                upd = h[i] if t == "SGD" else (1 + s["momentum"]) * h[i] - s["momentum"] * prev
            elif t == "AdaGrad":
                h[i] = h[i] + d * d
                upd = lr * d / (np.sqrt(h[i]) + s["delta"])
            elif t == "RMSProp":
                h[i] = s["rms_decay"] * h[i] + (1 - s["rms_decay"]) * d * d
                upd = lr * d / (np.sqrt(h[i]) + s["delta"])
            elif t == "AdaDelta":
                rho = s["momentum"]
                h[i] = rho * h[i] + (1 - rho) * d * d
                u = d * np.sqrt((h2[i] + s["delta"]) / (h[i] + s["delta"]))
                h2[i] = rho * h2[i] + (1 - rho) * u * u
                upd = lr * u
            else:
                b1, b2 = s["momentum"], s["momentum2"]
                h[i] = b1 * h[i] + (1 - b1) * d
                h2[i] = b2 * h2[i] + (1 - b2) * d * d
                corr = math.sqrt(1 - b2 ** (it + 1)) / (1 - b1 ** (it + 1))
                upd = lr * corr * h[i] / (np.sqrt(h2[i]) + s["delta"])
            w[i] = w[i] - upd
    return w


TYPES = {
    "SGD": {"momentum": 0.875},
    "Nesterov": {"momentum": 0.875},
    "AdaGrad": {"delta": 2.0**-20},
    "RMSProp": {"rms_decay": 0.96875, "delta": 2.0**-20},
    "AdaDelta": {"momentum": 0.9375, "delta": 2.0**-20, "base_lr": 1.0},
    "Adam": {"momentum": 0.875, "momentum2": 0.9990234375, "delta": 2.0**-20, "base_lr": 0.0625},
}
POLICIES = {
    "fixed": {},
    "step": {"gamma": 0.5, "stepsize": 3},
    "exp": {"gamma": 0.9375},
    "inv": {"gamma": 0.0625, "power": 0.75},
    "multistep": {"gamma": 0.25, "stepvalue": [2, 3, 7]},
    "poly": {"power": 0.5, "max_iter": 12},
    "sigmoid": {"gamma": 0.5, "stepsize": 4},
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("solver_type", sorted(TYPES))
def test_multi_step_run_matches_caffes_formulas(solver_type: str, policy: str) -> None:
    """12 updates with random gradients, L2 decay, two multiplier groups, a parameter
    without gradient, iter_size 2 and a clip that bites: the weights match the oracle."""
    rng = np.random.default_rng(sorted(TYPES).index(solver_type) * 10 + sorted(POLICIES).index(policy))
    s = {
        **_settings(type=solver_type, lr_policy=policy, base_lr=0.125, weight_decay=0.03125),
        **{"iter_size": 2, "clip_gradients": 2.0},
        **TYPES[solver_type],
        **POLICIES[policy],
    }
    s.setdefault("max_iter", 12)
    w0 = [rng.standard_normal(5), rng.standard_normal(3), rng.standard_normal(2)]
    mults = [(1.0, 1.0), (2.0, 0.0), (1.0, 1.0)]
    grads = [[rng.standard_normal(5) * 2, rng.standard_normal(3), np.zeros(2)] for _ in range(12)]
    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in w0]
    groups = [
        {"params": [params[0], params[2]], "lr_mult": 1.0, "weight_decay": s["weight_decay"]},
        {"params": [params[1]], "lr_mult": 2.0, "weight_decay": 0.0},
    ]
    opt, sched = _solver(s, groups)
    for it in range(12):
        params[0].grad = torch.from_numpy(grads[it][0].copy())
        params[1].grad = torch.from_numpy(grads[it][1].copy())
        params[2].grad = None  # no gradient: still decays, as in Caffe
        opt.step()
        sched.step()
    expected = _oracle(s, w0, mults, grads)
    for param, want in zip(params, expected):
        np.testing.assert_allclose(param.detach().numpy(), want, rtol=2e-6, atol=1e-7)


def test_l1_regularisation_adds_the_sign() -> None:
    w = _param(0.5, -0.25, 0.0)
    opt = _solver(_settings(weight_decay=0.5, regularization_type="L1"), [{"params": [w], "weight_decay": 0.5}])[0]
    w.grad = torch.zeros_like(w)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.45, -0.2, 0.0], atol=1e-7)


# ----------------------------------------------------------------- solver files
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    return path


def _settings_of(path: Path) -> dict:
    return solver_settings(*read_solver(path))


def test_a_bvlc_style_solver_reads_as_float32_values(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'net: "train_val.prototxt"\ntest_iter: 1000\ntest_interval: 4000\ndisplay: 40\nbase_lr: 0.01\n'
        'lr_policy: "step"\nstepsize: 320000\ngamma: 0.96\nmax_iter: 10000000\nmomentum: 0.9\n'
        "weight_decay: 0.0002\nsnapshot: 40000\nsolver_mode: GPU\n",
    )
    s = _settings_of(path)
    assert s["type"] == "SGD" and s["lr_policy"] == "step" and s["stepsize"] == 320000
    assert s["momentum"] == float(np.float32(0.9)) and s["base_lr"] == float(np.float32(0.01))
    assert s["kept"]["solver_mode"] == "GPU" and s["kept"]["test_iter"] == [1000] and s["notes"] == []


def test_the_deprecated_solver_type_is_upgraded(tmp_path: Path) -> None:
    s = _settings_of(_write(tmp_path, 'base_lr: 0.1\nlr_policy: "fixed"\nsolver_type: NESTEROV\nmomentum: 0.9\n'))
    assert s["type"] == "Nesterov"


def test_fields_the_type_does_not_read_are_noted(tmp_path: Path) -> None:
    s = _settings_of(_write(tmp_path, 'base_lr: 0.1\nlr_policy: "fixed"\nmomentum2: 0.99\nrms_decay: 0.9\n'))
    assert any("momentum2" in note for note in s["notes"]) and any("rms_decay" in note for note in s["notes"])
    assert "momentum2" not in s


@pytest.mark.parametrize(
    "text,line,message,fix",
    [
        ('base_lr: -0.1\nlr_policy: "fixed"\n', 1, "negative", "a rate >= 0"),
        ('base_lr: nan\nlr_policy: "fixed"\n', 1, "base_lr is nan", "finite"),
        ('base_lr: 0.1\nlr_policy: "step"\ngamma: 0.1\nstepsize: 0\n', 4, "stepsize > 0", "stepsize"),
        ('base_lr: 0.1\nlr_policy: "poly"\npower: 0.5\n', 0, "max_iter", "max_iter"),
        ('base_lr: 0.1\nlr_policy: "stepp"\n', 2, "not one Caffe knows", "did you mean 'step'"),
        ('base_lr: 0.1\nlr_policy: "fixed"\ntype: "adam"\n', 3, "not one Caffe knows", "did you mean 'Adam'"),
        ('base_lr: 0.1\nlr_policy: "multistep"\ngamma: 0.1\nstepvalue: 5\nstepvalue: 5\n', 4,
         "not increasing", "order"),
        ('base_lr: 0.1\nlr_policy: "fixed"\ntype: "SGD"\nsolver_type: ADAM\n', 4, "both", "keep `type`"),
        ('base_lr: 0.1\nlr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n', 4, "no momentum", "remove"),
        ('base_lr: 0.1\nlr_polcy: "fixed"\n', 2, "no field named", "did you mean 'lr_policy'"),
        ('name: "net"\nlayer { name: "data" type: "Input" }\n', 1, "network definition, not a solver", "solver"),
    ],
)  # fmt: skip
def test_bad_solvers_are_located_errors(text: str, line: int, message: str, fix: str, tmp_path: Path) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        _settings_of(path)
    error = caught.value
    assert message in error.message and fix in (error.fix or ""), error
    assert error.location is not None and error.location.startswith(str(path))
    if line:
        assert error.location.split(":")[len(str(path).split(":"))] == str(line)


def test_the_cli_says_what_a_solver_means_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = _write(tmp_path, 'base_lr: 0.01\nlr_policy: "poly"\npower: 0.5\nmax_iter: 2400000\nmomentum: 0.9\n')
    run = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "solver", str(good), "--at", "2399999"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "h = momentum*h + rate*g" in run.stdout and "rate at iteration 2399999: 6.459" in run.stdout
    bad = tmp_path / "bad.prototxt"
    bad.write_text('base_lr: 0.01\nlr_policy: "poly"\n')
    run = subprocess.run([sys.executable, "-m", "surgery.cli", "solver", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "max_iter" in run.stderr


# ------------------------------------------------------------- spec and emitted model
def _load_folder(folder: Path):
    spec = importlib.util.spec_from_file_location("emitted_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


def test_a_spec_solver_reaches_the_emitted_model_and_trains_as_the_oracle(toy_spec, tmp_path: Path) -> None:
    spec = toy_spec(
        'edit { lr { layer: "features.block1_conv1" lr_mult: 0 } }\n'
        'solver { caffe_fields { base_lr: 0.125 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.875 '
        "weight_decay: 0.0625 } }\n"
    )
    out = tmp_path / "out"
    surgery.apply(spec, out)
    model = _load_folder(out / "torch")
    assert model.SOLVER["type"] == "SGD" and model.SOLVER["stepsize"] == 2
    assert json.loads((out / "report.json").read_text())["solver"]["lr_policy"] == "step"
    optimizer, scheduler = model.caffe_solver()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    w0 = [p.detach().double().numpy().copy() for _, p in named]
    mults = [model.LR_MULTS.get(n, (1.0, 1.0)) for n, _ in named]
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for _, p in named] for _ in range(5)]
    for step in grads:
        for (_, p), g in zip(named, step):
            p.grad = torch.from_numpy(g)
        optimizer.step()
        scheduler.step()
    s = dict(model.SOLVER, iter_size=1)
    expected = _oracle(s, w0, mults, [[g.astype(np.float64) for g in step] for step in grads])
    for (name, p), want in zip(named, expected):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_a_bad_inline_solver_is_located_in_the_spec(toy_spec) -> None:
    spec = toy_spec('solver { caffe_fields { base_lr: 0.1 lr_policy: "fixd" } }')
    with pytest.raises(SpecError) as caught:
        surgery.plan(spec)
    assert caught.value.location.startswith(f"{spec}:") and "did you mean 'fixed'" in caught.value.fix


def test_a_solver_file_is_an_input_of_the_run(toy_spec, tmp_path: Path) -> None:
    (tmp_path / "solver.prototxt").write_text('base_lr: 0.1\nlr_policy: "fixed"\n')
    spec = toy_spec('solver { caffe: "solver.prototxt" }')
    surgery.apply(spec, tmp_path / "out")
    inputs = json.loads((tmp_path / "out" / "report.json").read_text())["files"]["inputs"]
    assert any(Path(record["path"]).name == "solver.prototxt" for record in inputs)


def test_weighted_loss_sums_the_heads_as_caffe_does() -> None:
    net = surgery.load(torch.nn.Sequential(torch.nn.Linear(4, 3)), (2, 4))
    model = surgery.to_torch(net)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    out = model(x)
    loss = model.weighted_loss(out, torch.nn.functional.cross_entropy, y)
    assert torch.equal(loss, torch.nn.functional.cross_entropy(out, y))
    type(model).LOSS_WEIGHTS = {"a": 0.3, "b": 1.0}
    heads = {"a": out, "b": out * 2}
    want = 0.3 * torch.nn.functional.cross_entropy(out, y) + torch.nn.functional.cross_entropy(out * 2, y)
    assert torch.allclose(model.weighted_loss(heads, torch.nn.functional.cross_entropy, y), want)


def test_the_googlenet_example_trains_through_the_recipe() -> None:
    """examples/finetune_googlenet_caffe.py, shortened: quick_solver's poly schedule, the
    heads' losses weighted 0.3 / 0.3 / 1, the frozen trunk left alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        import finetune_googlenet_caffe
    finally:
        sys.path.pop(0)
    losses = finetune_googlenet_caffe.main(iterations=20)
    assert len(losses) == 20 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) < sum(losses[:5]), "the heads learn"


def test_a_model_file_named_as_the_solver_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"\x08" * (2 << 20))
    with pytest.raises(SpecError, match="at most") as caught:
        read_solver(path)
    assert caught.value.location == f"{path}:1:1" and "not a model file" in caught.value.fix


@pytest.mark.parametrize("solver_type", sorted(TYPES))
def test_save_and_resume_runs_on_exactly(solver_type: str, tmp_path: Path) -> None:
    """N steps, torch.save of the optimizer's and scheduler's state_dicts, a fresh solver
    loading them, N more: bitwise the 2N straight (Caffe's .solverstate keeps iter_, and
    Adam's bias correction counts from it)."""
    s = {**_settings(type=solver_type, lr_policy="inv", gamma=0.0625, power=0.75, base_lr=0.125), **TYPES[solver_type]}
    rng = np.random.default_rng(3)
    start = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(20)]

    def fresh() -> tuple[torch.nn.Parameter, CaffeSolver, CaffeRate]:
        param = torch.nn.Parameter(torch.from_numpy(start.copy()))
        return (param, *_solver(s, [{"params": [param], "lr_mult": 1.0, "weight_decay": 0.0}]))

    def run(param, optimizer, scheduler, steps) -> None:
        for grad in steps:
            param.grad = torch.from_numpy(grad.copy())
            optimizer.step()
            scheduler.step()

    straight, optimizer, scheduler = fresh()
    run(straight, optimizer, scheduler, grads)
    first, optimizer, scheduler = fresh()
    run(first, optimizer, scheduler, grads[:10])
    torch.save({"w": first.detach(), "opt": optimizer.state_dict(), "sched": scheduler.state_dict()}, tmp_path / "c")
    saved = torch.load(tmp_path / "c", weights_only=True)
    resumed, optimizer, scheduler = fresh()
    with torch.no_grad():
        resumed.copy_(saved["w"])
    optimizer.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["sched"])
    run(resumed, optimizer, scheduler, grads[10:])
    assert torch.equal(resumed, straight)


@pytest.mark.parametrize(
    ("policy", "iteration", "want"),
    [
        ({"lr_policy": "sigmoid", "gamma": 0.1, "stepsize": 10000}, 0, 0.0),  # expf(1000) is inf in Caffe
        ({"lr_policy": "exp", "gamma": 1.5}, 1000, math.inf),
        ({"lr_policy": "inv", "gamma": -0.1, "power": 0.75}, 100, math.nan),  # pow(-9, -0.75)
        ({"lr_policy": "inv", "gamma": 0.1, "power": -0.75}, 100, 0.060401052),
        ({"lr_policy": "poly", "power": 0.5, "max_iter": 100}, 150, math.nan),  # pow(-0.5, 0.5)
        ({"lr_policy": "step", "gamma": 1e30, "stepsize": 1}, 3, math.inf),
    ],
)
def test_rates_past_floats_range_are_what_caffes_float_math_gives(policy: dict, iteration: int, want: float) -> None:
    rate = caffe_rate(_settings(base_lr=0.01, **policy), iteration)
    if math.isnan(want):
        assert math.isnan(rate)
    else:
        assert rate == pytest.approx(want, rel=1e-7)


def test_a_sigmoid_solver_that_overflows_trains_in_the_emitted_model(tmp_path: Path, capsys) -> None:
    """A valid Caffe sigmoid solver whose first rates overflow exp: apply writes it, and
    model.caffe_solver() steps (rate 0 at first, as in Caffe), no OverflowError."""
    from surgery.cli import main

    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
        'solver { caffe_fields { base_lr: 0.01 lr_policy: "sigmoid" gamma: 0.1 stepsize: 10000 } }\n'
        "output { pytorch { } }\n"
    )
    assert main(["apply", "-q", str(spec), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    sys.path.insert(0, str(tmp_path / "out" / "torch"))
    try:
        module_spec = importlib.util.spec_from_file_location("overflow_model", tmp_path / "out" / "torch" / "model.py")
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        model = module.load()
        optimizer, scheduler = model.caffe_solver()
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.rand(2, 1, 8, 8)).sum().backward()
        optimizer.step()
        scheduler.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # rate 0
    finally:
        sys.path.remove(str(tmp_path / "out" / "torch"))


def test_the_cli_shows_a_rate_caffe_cannot_use_with_why(tmp_path: Path, capsys) -> None:
    from surgery.cli import main

    solver = tmp_path / "poly.prototxt"
    solver.write_text('base_lr: 0.01\nlr_policy: "poly"\npower: 0.5\nmax_iter: 100\n')
    assert main(["solver", str(solver), "--at", "100,150"]) == 0
    out = capsys.readouterr().out
    assert "rate at iteration 100: 0" in out and "rate at iteration 150: nan (Caffe's float arithmetic" in out


def test_an_error_inside_the_solver_file_also_names_the_spec_line(tmp_path: Path, capsys) -> None:
    """Found by tools/fuzz_specs.py: an error located in the solver file (a net definition
    named as the solver) also says which line of the spec named that file."""
    from surgery.cli import main

    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\nlayer { name: "data" type: "Input" top: "data" }\n')
    spec = tmp_path / "spec.prototxt"
    spec.write_text(
        'source { torch { factory: "surgery.zoo:DigitsCNN" } input_shape: [1, 1, 8, 8] }\n'
        'solver { caffe: "net.prototxt" }\n'
    )
    assert main(["plan", "-q", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{net}:1:1: this is a Caffe network definition, not a solver" in err
    assert f"(the solver named at {spec}:2:" in err, err
