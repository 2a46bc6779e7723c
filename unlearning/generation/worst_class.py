"""The worst-case forget class of a generation unlearning method: which class is hardest for it to forget?

Objective (as on the classifier side, `unlearning.worst_case`): after unlearning class c with the method,
the forget loss of class c,

    ℓ_c(θ) = mean_{x ∈ D_c} ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t, c)‖²     (fixed ε, t per image: seeded)

is the diffusion loss of class c's images under prompt c. A LOW ℓ_c after unlearning means the model still
denoises class c as class c: it still generates it. The worst class is argmin_c ℓ_c(θ_u(c)); UA (the share of
class-c generations the judge does not call c) is reported beside it (a low UA is the visible symptom).

Two ways to find it:

- `exact_worst_class`: with K ≤ 10 classes run the method once per class and measure ℓ_c (and UA, remaining
  accuracy and FID when a judge is given): the ground truth.
- `search_worst_class`: the bi-level class-wise search through `bilevel`. Upper variable v on the
  capped simplex {v ∈ [0, 1]^K : Σ v = 1}; each training image i gets forget weight w_i = v_{y_i} and
  retain weight 1 − w_i; the lower level is the method's objective with those weights
  (``method.class_terms`` gives the per-sample forget and remain terms f_i, r_i;
  g(θ, v) = mean_f^w(f) + mean_r^w(r) as in `unlearning.methods.base`) run for K_in signSGD steps from θ_o;
  the upper objective is F(v) = Σ_c v_c ℓ_c(θ_K(v)). The first-order rule of the worst-case paper
  (`bilevel.FirstOrder("partial")`: the signSGD path has derivative 0 almost everywhere) gives
  ∂F/∂v_c = ℓ_c(θ_K); projected descent on v; the found class is argmax_c v_c. SalUn's lower level holds
  the masked-out weights at θ_o (θ̃ = m ⊙ θ + (1 − m) ⊙ θ_o, m the mask of the task's forget class), as
  `unlearning.saliency.Masked` does.

`agreement` counts how often the search found the exact worst class.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import bilevel
from bilevel import CappedSimplex, optim
from bilevel.validate import number, positive_int
from unlearning.generation.methods import Iterative, check_model_task
from unlearning.generation.task import GenerationTask
from unlearning.methods.base import NoLowerLevelError, forget_mean, retain_mean


# ------------------------------------------------------------------------------------------ the objective
def class_draws(model: nn.Module, data: Any, cls: int, *, per_class: int, seed: int) -> tuple[Tensor, ...]:
    """(z₀, c, ε, t) for the first ``per_class`` images of class ``cls``: ε and t drawn from a generator
    seeded ``seed + cls`` (the same draws for every model, so ℓ_c compares models)."""
    x = data.x[data.y == cls][:per_class]
    if len(x) == 0:
        raise ValueError(f"class {cls} has no image in the data")
    z0 = model.encode(x)
    gen = torch.Generator().manual_seed(int(seed) + int(cls))
    t = torch.randint(0, model.num_train_timesteps, (len(x),), generator=gen).to(z0.device)
    noise = torch.randn(z0.shape, generator=gen).to(z0.device, z0.dtype)
    labels = torch.full((len(x),), int(cls), device=z0.device)
    return z0, labels, noise, t


@torch.no_grad()
def class_forget_loss(model: nn.Module, data: Any, cls: int, *, per_class: int = 128, seed: int = 0) -> float:
    """ℓ_c(θ) (see module) on the first ``per_class`` images of class ``cls``."""
    from unlearning.generation.diffusion import add_noise

    was = model.training
    model.eval()
    z0, labels, noise, t = class_draws(model, data, cls, per_class=per_class, seed=seed)
    err = (noise - model(add_noise(z0, noise, t), t, labels=labels)).pow(2).flatten(1).sum(1)
    model.train(was)
    return float(err.mean())


# ----------------------------------------------------------------------------------------- exact search
@dataclass
class ClassRow:
    """One class's result: its forget loss after unlearning, the metrics (None without a judge), seconds."""

    cls: int
    forget_loss: float
    seconds: float
    ua: float | None = None
    remain_acc: float | None = None
    fid: float | None = None


@dataclass
class ExactResult:
    """Every class's row; ``worst`` = argmin forget loss, ``worst_ua`` = argmin UA (None without a judge)."""

    method: str
    rows: list[ClassRow]
    worst: int
    worst_ua: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}


def exact_worst_class(
    method: Any,
    model: nn.Module,
    task: GenerationTask,
    *,
    classes: tuple[int, ...] | None = None,
    judge: Any = None,
    real: Any = None,
    per_class: int = 128,
    metric_kw: dict[str, Any] | None = None,
) -> ExactResult:
    """Run ``method`` once per class (``task.with_forget((c,))``) and score it: ℓ_c after unlearning (on
    ``per_class`` images, seeded by ``task.seed``), and with a ``judge`` UA, remaining accuracy and FID
    (`metrics.evaluate_generation` against ``real``, default ``task.data``; ``metric_kw`` passed on)."""
    check_model_task(model, task)
    classes = tuple(range(task.num_classes)) if classes is None else tuple(classes)
    if task.num_classes > 10 and classes == tuple(range(task.num_classes)):
        raise ValueError(
            f"exact_worst_class runs the method once per class; K = {task.num_classes} > 10: pass classes="
        )
    start = time.perf_counter()
    rows = []
    for c in classes:
        out = method.unlearn(model, task.with_forget((c,)))
        row = ClassRow(
            c, class_forget_loss(out.model, task.data, c, per_class=per_class, seed=task.seed), out.seconds
        )
        if judge is not None:
            from unlearning.generation.metrics import evaluate_generation

            reference = task.data if real is None else real
            kw = {"seed": task.seed, **(metric_kw or {})}
            m = evaluate_generation(out.model, judge, reference, (c,), **kw)
            row.ua, row.remain_acc, row.fid = m.ua, m.remain_acc, m.fid
        rows.append(row)
    worst = min(rows, key=lambda r: r.forget_loss).cls
    worst_ua = min(rows, key=lambda r: r.ua).cls if judge is not None else None
    name = getattr(method, "name", type(method).__name__)
    return ExactResult(name, rows, worst, worst_ua, time.perf_counter() - start)


# --------------------------------------------------------------------------------------- bi-level search
@dataclass
class SearchResult:
    """The class weights v after the search, the found class argmax v, the per-class losses at the last
    lower-level solution, the history of v and the seconds."""

    method: str
    v: list[float]
    found: int
    losses: list[float]
    history: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Functional:
    """``model`` evaluated at the parameter dict ``params`` (``torch.func.functional_call``), with the
    attributes the methods' ``class_terms`` read."""

    def __init__(self, module: nn.Module, params: dict[str, Tensor]) -> None:
        self.module, self.params = module, params
        self.num_classes = module.num_classes

    def __call__(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return torch.func.functional_call(
            self.module, self.params, (x_t, t), {"labels": labels}, strict=False
        )


def _lower_problem(method: Iterative, module: nn.Module, task: GenerationTask, evals: list, hold: Any):
    """The `bilevel.BilevelProblem` of the class-wise search (see module)."""
    y_all = task.data.y

    def inner_loss(theta: dict, outer: dict, batch: Any) -> Tensor:
        x, y, index, noise, t = batch
        f, r = method.class_terms(_Functional(module, hold(theta)), module.encode(x), y, noise, t)
        weights = outer["v"][y_all]
        total = retain_mean(r, index, weights)
        return total if f is None else total + forget_mean(f, index, weights)

    def outer_loss(theta: dict, outer: dict, batch: Any) -> Tensor:
        losses = _class_losses(_Functional(module, hold(theta)), evals)
        return (outer["v"] * losses.to(outer["v"].dtype)).sum()

    return bilevel.BilevelProblem(inner_loss, outer_loss)


@torch.no_grad()
def _class_losses(model: Any, evals: list) -> Tensor:
    from unlearning.generation.diffusion import add_noise

    out = []
    for z0, labels, noise, t in evals:
        err = (noise - model(add_noise(z0, noise, t), t, labels=labels)).pow(2).flatten(1).sum(1)
        out.append(err.mean())
    return torch.stack(out)


def _batches(task: GenerationTask, module: nn.Module, batch_size: int, seed: int):
    """step -> (x, y, index, ε, t): a uniform batch of the training data with its noise and antithetic t."""
    from unlearning.generation.diffusion import sample_timesteps

    data = task.data

    def batch(step: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed(int(seed) * 100_003 + step)
        index = torch.randint(0, len(data), (batch_size,), generator=gen)
        x, y = data.x[index.to(data.x.device)], data.y[index.to(data.y.device)]
        t = sample_timesteps(batch_size, generator=gen, antithetic=True).to(x.device)
        noise = torch.randn((batch_size, *module.latent_shape), generator=gen).to(x.device, x.dtype)
        return x, y, index.to(x.device), noise, t

    return batch


def search_worst_class(
    method: Any,
    model: nn.Module,
    task: GenerationTask,
    *,
    outer_steps: int = 10,
    inner_steps: int = 5,
    inner_lr: float = 1e-4,
    upper_lr: float = 0.05,
    batch_size: int = 64,
    per_class: int = 64,
) -> SearchResult:
    """The first-order bi-level class-wise search (see module): ``outer_steps`` projected SGD steps (lr
    ``upper_lr``) on v ∈ {v ∈ [0,1]^K : Σv = 1} from the uniform v; each runs ``inner_steps`` signSGD steps
    (lr ``inner_lr``) of the weighted lower level from θ_o on batches of ``batch_size``; ℓ_c on ``per_class``
    images per class. Methods without ``class_terms`` (Retrain, ESD, FMN) raise `NoLowerLevelError`."""
    check_model_task(model, task)
    positive_int(outer_steps, "outer_steps")
    positive_int(inner_steps, "inner_steps")
    number(inner_lr, "inner_lr")
    number(upper_lr, "upper_lr")
    if not isinstance(method, Iterative) or type(method).class_terms is Iterative.class_terms:
        name = getattr(method, "name", type(method).__name__)
        raise NoLowerLevelError(f"{name}: no per-class objective (class_terms); search ft, ga, rl or salun")
    start = time.perf_counter()
    module = _private_copy(model)
    theta0 = {n: p.detach().clone() for n, p in module.named_parameters()}
    hold = _holder(method, model, task, theta0)
    evals = [
        class_draws(module, task.data, c, per_class=per_class, seed=task.seed)
        for c in range(task.num_classes)
    ]
    problem = _lower_problem(method, module, task, evals, hold)
    solver = bilevel.FirstOrder(optim.SignSGD(lr=inner_lr), steps=inner_steps, mode="partial")
    k = task.num_classes
    history: list[list[float]] = []
    result = bilevel.minimize(
        problem,
        solver,
        {"v": torch.full((k,), 1.0 / k, dtype=torch.float64, device=task.data.x.device)},
        optim.SGD(lr=upper_lr),
        outer_steps,
        constraint=CappedSimplex(1.0),
        callback=lambda step, outer, hg: history.append(outer["v"].tolist()) and False,
        inner_init=theta0,
        inner_data=_batches(task, module, batch_size, task.seed),
        warm_start_inner=False,
    )
    losses = _class_losses(_Functional(module, hold(result.inner)), evals)
    v = result.outer["v"]
    name = getattr(method, "name", type(method).__name__)
    return SearchResult(
        name, v.tolist(), int(torch.argmax(v)), losses.tolist(), history, time.perf_counter() - start
    )


def _private_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def _holder(method: Any, model: nn.Module, task: GenerationTask, theta0: dict[str, Tensor]):
    """θ ↦ θ̃: the identity, or for a masked method (SalUn) m ⊙ θ + (1 − m) ⊙ θ_o with its saliency mask
    computed on the task's forget class (the search's starting forget set)."""
    mask = method.mask(model, task)
    if mask is None:
        return lambda theta: theta
    return lambda theta: {n: torch.where(mask[n], p, theta0[n]) if n in mask else p for n, p in theta.items()}


def agreement(exact: dict[str, int], found: dict[str, int]) -> dict[str, Any]:
    """How often the search found the exact worst class: ``{"hits", "total", "rate", "per_key"}`` over the
    keys (e.g. method/seed) both dicts share."""
    keys = sorted(set(exact) & set(found))
    per_key = {k: {"exact": exact[k], "found": found[k], "hit": exact[k] == found[k]} for k in keys}
    hits = sum(v["hit"] for v in per_key.values())
    return {"hits": hits, "total": len(keys), "rate": hits / len(keys) if keys else None, "per_key": per_key}


__all__ = [
    "ClassRow",
    "ExactResult",
    "SearchResult",
    "agreement",
    "class_forget_loss",
    "exact_worst_class",
    "search_worst_class",
]
