# Caffe's solvers for an emitted PyTorch model. Its source text (below the marker) is copied
# verbatim into a generated `model.py` whose spec names a solver, after rates.py's, so the
# folder trains as Caffe did with only torch installed: this file must import nothing but
# torch, the standard library and rates.py.
"""Caffe's update and learning-rate schedule, exactly, as a torch optimizer and scheduler.

``CaffeSolver`` runs Caffe's ``SGDSolver::ApplyUpdate`` literally, once per call of
``step()`` (one Caffe iteration):

1. clip: the global L2 norm of every parameter's accumulated gradient, scaled down to
   ``clip_gradients`` when above it (before normalisation and decay, as Caffe does);
2. normalise: the gradient times ``1 / iter_size`` (call ``backward()`` on each of the
   ``iter_size`` micro-batches' losses, not divided, then ``step()`` once);
3. regularise: ``+ weight_decay * decay_mult * w`` (L2) or ``* sign(w)`` (L1);
4. the rule of the solver type (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) with the
   local rate ``rate(iter) * lr_mult`` inside the history, as Caffe keeps it;
5. ``w -= update``.

Every parameter of the groups is updated on every step, a parameter without a gradient
as if its gradient were zero (it still decays and keeps its momentum), as in Caffe.

``CaffeRate`` is the scheduler: after each ``optimizer.step()``, ``scheduler.step()``
sets every group's ``lr`` to ``caffe_rate(settings, iter) * lr_mult``, the closed form
of Caffe's ``GetLearningRate`` in float32 arithmetic where Caffe's is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from surgery.solver.rates import SOLVER_TYPES, _f32, caffe_rate  # in model.py: rates.py's code, above

# --- copied into a generated model.py from here on ---


class CaffeSolver(torch.optim.Optimizer):
    """One Caffe iteration per ``step()``; each group's ``lr`` is its local rate
    (``rate * lr_mult``, kept current by :class:`CaffeRate`) and ``weight_decay`` its
    local decay (``weight_decay * decay_mult``)."""

    def __init__(
        self,
        params: list,
        *,
        type: str = "SGD",
        momentum: float = 0.0,
        momentum2: float = 0.999,
        delta: float = 1e-8,
        rms_decay: float = 0.99,
        regularization_type: str = "L2",
        clip_gradients: float = -1.0,
        iter_size: int = 1,
    ) -> None:
        if type not in SOLVER_TYPES:
            raise ValueError(f"unknown solver type {type!r}; Caffe knows {', '.join(SOLVER_TYPES)}")
        if regularization_type not in ("L1", "L2"):
            raise ValueError(f"unknown regularization_type {regularization_type!r}; Caffe knows L1 and L2")
        defaults = {"lr": 0.0, "weight_decay": 0.0}
        super().__init__(params, defaults)
        self.type = type
        self.momentum, self.momentum2, self.delta, self.rms_decay = momentum, momentum2, delta, rms_decay
        self.regularization_type = regularization_type
        self.clip_gradients = clip_gradients
        self.iter_size = iter_size
        self.iteration = 0  # Caffe's iter_: updates applied so far

    def state_dict(self) -> dict:
        """torch's optimizer state plus Caffe's ``iter_`` (Adam's bias correction counts
        from it), as Caffe's ``.solverstate`` keeps it: save, load into a fresh solver,
        and the run goes on exactly."""
        state = super().state_dict()
        state["caffe_iteration"] = self.iteration
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` saved (the iteration too)."""
        state_dict = dict(state_dict)
        self.iteration = int(state_dict.pop("caffe_iteration", 0))
        super().load_state_dict(state_dict)

    def _gradients(self) -> list[list[torch.Tensor]]:
        """Each group's gradients (zeros where a parameter has none), clipped as Caffe
        clips: on the accumulated sum, before normalisation and decay."""
        grads = [
            [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in group["params"]]
            for group in self.param_groups
        ]
        if self.clip_gradients >= 0:
            squares = [g.double().pow(2).sum() for gs in grads for g in gs]
            norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
            if norm > self.clip_gradients:
                scale = self.clip_gradients / norm
                grads = [[g * scale for g in gs] for gs in grads]
        return grads

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Apply one Caffe update to every parameter of every group, one parameter at a
        time (as torch's SGD runs on the CPU: each tensor stays in cache throughout)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, grads in zip(self.param_groups, self._gradients()):
            rate, decay = group["lr"], group["weight_decay"]
            for param, grad in zip(group["params"], grads):
                diff = self._diff(param, grad, decay)
                if self.type in ("SGD", "Nesterov"):
                    self._momentum_step(param, diff, rate)
                else:
                    param.sub_(self._update(self.state[param], diff, rate))
        self.iteration += 1
        return loss

    def _diff(self, param: torch.Tensor, grad: torch.Tensor, decay: float) -> torch.Tensor:
        """The gradient normalised (``1 / iter_size``) and regularised, as a new tensor
        (the gradient itself, read only, when there is nothing to do)."""
        diff = grad * (1.0 / self.iter_size) if self.iter_size != 1 else grad
        if decay == 0:
            return diff
        return diff.add(param if self.regularization_type == "L2" else torch.sign(param), alpha=decay)

    def _momentum_step(self, param: torch.Tensor, diff: torch.Tensor, rate: float) -> None:
        """SGD and Nesterov: ``h = m*h + rate*g``; SGD subtracts ``h``, Nesterov
        ``(1+m)*h - m*h_prev``."""
        m = self.momentum
        history = self._history(param, "history")
        if self.type == "SGD":
            param.sub_(history.mul_(m).add_(diff, alpha=rate))
            return
        previous = history * m
        history.mul_(m).add_(diff, alpha=rate)
        param.add_(history, alpha=-(1.0 + m)).add_(previous)

    def _history(self, param: torch.Tensor, key: str) -> torch.Tensor:
        return _zeros(self.state[param], key, param)

    def _update(self, state: dict, g: torch.Tensor, rate: float) -> torch.Tensor:
        """Caffe's ``ComputeUpdateValue`` for one parameter: the amount to subtract."""
        if self.type == "AdaGrad":
            history = _zeros(state, "history", g)
            history.addcmul_(g, g)
            return g * rate / (history.sqrt() + self.delta)
        if self.type == "RMSProp":
            history = _zeros(state, "history", g)
            history.mul_(self.rms_decay).addcmul_(g, g, value=1.0 - self.rms_decay)
            return g * rate / (history.sqrt() + self.delta)
        if self.type == "AdaDelta":
            history = _zeros(state, "history", g)
            update_history = _zeros(state, "update_history", g)
            rho = self.momentum
            history.mul_(rho).addcmul_(g, g, value=1.0 - rho)
            update = g * ((update_history + self.delta) / (history + self.delta)).sqrt()
            update_history.mul_(rho).addcmul_(update, update, value=1.0 - rho)
            return update * rate
        # Adam: beta1 is Caffe's momentum, beta2 momentum2; t the global iteration
        beta1, beta2, t = self.momentum, self.momentum2, self.iteration + 1
        m = _zeros(state, "history", g)
        v = _zeros(state, "update_history", g)
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        correction = math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t))
        return m * (rate * correction) / (v.sqrt() + self.delta)


def _zeros(state: dict, key: str, like: torch.Tensor) -> torch.Tensor:
    """``state[key]``, created as zeros on first use (Caffe's history blobs start at 0)."""
    if key not in state:
        state[key] = torch.zeros_like(like)
    return state[key]


class CaffeRate(torch.optim.lr_scheduler.LRScheduler):
    """Sets each group's ``lr`` to ``caffe_rate(settings, iteration) * lr_mult`` (a
    group's ``lr_mult`` key, 1 when absent). Step it once after each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: dict) -> None:
        self.settings = settings
        super().__init__(optimizer)

    def get_lr(self) -> list[float | torch.Tensor]:
        rate = caffe_rate(self.settings, self.last_epoch)
        return [_f32(rate * group.get("lr_mult", 1.0)) for group in self.optimizer.param_groups]


def caffe_solver(model: torch.nn.Module, settings: dict) -> tuple[CaffeSolver, CaffeRate]:
    """The optimizer and scheduler of a Caffe solver (``settings``: SOLVER's keys) for
    ``model``'s parameter groups (one per lr_mult / decay_mult; frozen ones left out)."""
    # model: an emitted SurgeryModule, whose param_groups honour lr_mult / decay_mult
    groups = model.param_groups(lr=0.0, weight_decay=settings.get("weight_decay", 0.0))  # type: ignore[operator]
    for group in groups:
        group["weight_decay"] = _f32(group["weight_decay"])
    optimizer = CaffeSolver(
        groups,
        **{key: settings[key] for key in _OPTIMIZER_KEYS if key in settings},
    )
    return optimizer, CaffeRate(optimizer, settings)


_OPTIMIZER_KEYS = (
    "type",
    "momentum",
    "momentum2",
    "delta",
    "rms_decay",
    "regularization_type",
    "clip_gradients",
    "iter_size",
)
