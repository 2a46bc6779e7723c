"""The worst-case forget set of an unlearning method, by bi-level optimisation (Fan et al., ECCV 2024).

Upper variable: forget weights w over the training pool (N examples), relaxed from {0,1}^N to the capped
simplex S̃ = {w ∈ [0,1]^N : Σ_i w_i = m} (m = the budget, e.g. 10% of the pool). With ℓ_i(θ) the
cross-entropy of pool example i and g(θ, w) the method's weighted objective (``bound.lower_loss``),

    min_{w ∈ S̃}  F(w) = Σ_i w_i ℓ_i(θ_K(w)) + γ‖w‖²
    s.t.  θ_K(w) = K steps of the lower-level optimizer on g(·, w), from θ_o (a fresh init for Retrain)

A low forget loss *after* unlearning means the method leaves those points fitted: they are the hardest to
forget. The lower level restarts from the same state at every upper step (as the published code does). The
hypergradient comes from a `bilevel` solver (``hypergrad=``):

- ``"first_order"`` (default, the paper's rule): a signSGD lower level, θ ← θ − η·sign(∇_θ g), whose
  derivative is 0 almost everywhere, so ∂F/∂w_i = ℓ_i(θ_K) + 2γw_i (`bilevel.FirstOrder("partial")`);
- ``"unrolled"``: reverse mode through K differentiable SGD steps (`bilevel.Unrolled`);
- ``"implicit"``: a proximal lower level g(θ, w) + (ρ/2)‖θ − θ_o‖² (``proximal`` ρ), K SGD steps, and the
  implicit-function theorem at θ_K: ∇F = ∂_w F − ∇²_{wθ} g · v with (H + ρI)v = ∂_θ F solved by CG
  (`bilevel.Implicit`). A network's g alone is not strongly convex; the proximal term makes the system
  positive definite wherever λ_min(H) > −ρ (near θ_o). CG starts from the previous upper step's v
  (``warm_start``); directions of non-positive curvature stop it and are flagged.

The lower level itself restarts from θ_o in every mode, so F(w) is a function of w alone (docs/worst_case.md,
"Warm starts").

Projected descent w ← Π_S̃(w − η_w ∇F) runs in `bilevel.minimize` (exact capped-simplex projection); every
``binarize_every`` upper steps w is replaced by its top-m indicator, and the final set is top-m(w).
``reverse=True`` maximises the forget loss instead (F = −Σ w_i ℓ_i + γ‖w‖²): the best case, the easiest set
to forget. ``classwise=True`` puts one weight per class (w_i = v_{y_i}; F = Σ_c v_c · mean_{y_i=c} ℓ_i +
γ‖v‖², Σv = number of classes to forget).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bilevel
from bilevel import CappedSimplex, optim, top_k

from .data_types import ArrayData, Task
from .methods.base import NoLowerLevelError
from .rng import seeded
from .splits import check_made_for, data_fingerprint, forget_indices

__all__ = ["HYPERGRADS", "SearchResult", "search", "build_problem", "make_solver", "resolve_budget"]

HYPERGRADS = ("first_order", "unrolled", "implicit")

#: Defaults chosen on digits/MLP (docs/worst_case.md): the signSGD step of the paper's rule, and the
#: projected-descent step on w (the per-step change of a weight is at most ``upper_lr`` × the spread of ℓ_i).
DEFAULT_SIGN_LR = 1e-2
DEFAULT_SGD_LR = 0.05
DEFAULT_UPPER_LR = 30.0
#: class-wise, a class's mean loss after the whole class left the retain set is large (≈ 10 on digits), and
#: steps of 30 jump between vertices of the simplex; 1.0 lets the weights settle.
DEFAULT_UPPER_LR_CLASSWISE = 1.0
#: implicit mode: the proximal weight ρ of the lower level g(θ, w) + (ρ/2)‖θ − θ_o‖², and the relative CG
#: residual at which the linear solve stops (docs/worst_case.md, "Implicit").
DEFAULT_PROXIMAL = 1.0
DEFAULT_CG_TOL = 1e-4


# ------------------------------------------------------------------------------------------------ result
@dataclass
class SearchResult:
    """What `search` found.

    ``indices``: sorted int64 pool positions of the selected forget set (class-wise: every example of the
    selected classes). ``weights``: the final continuous w (length N, or one per class). ``classes``: the
    selected classes (class-wise only). ``initial_indices``: the random start set, of the same size (the
    "random forget set" to compare with). ``history``: one dict per upper step (``objective`` F(w_k),
    ``forget_loss`` Σ w_i ℓ_i, ``weight_sum`` Σw after the step, ``changed`` entries that entered the top-m,
    ``overlap_previous`` |top-m(w_k) ∩ top-m(w_{k−1})| / m (step 1: against the start set),
    ``overlap_final`` |top-m(w_k) ∩ final| / m, ``binarized``, ``seconds``, solver diagnostics: implicit
    mode adds ``iterations``, ``residual``, ``hvp_count``, ``warm_started``).
    ``objective`` holds F at the initial set and at the final binary set. ``fingerprint``: the data the
    positions index (`unlearning.splits.data_fingerprint`: dataset, split seed, pool size, pool SHA-256).
    """

    indices: Tensor
    weights: Tensor
    history: list[dict[str, Any]]
    config: dict[str, Any]
    initial_indices: Tensor
    objective: dict[str, float] = field(default_factory=dict)
    classes: Tensor | None = None
    seconds: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        """Work summed over the upper steps: ``upper_steps``, ``hvp`` (Hessian-vector products, implicit mode)
        and ``cg_iterations``."""
        return {
            "upper_steps": len(self.history),
            "hvp": sum(int(h.get("hvp_count") or 0) for h in self.history),
            "cg_iterations": sum(int(h.get("iterations") or 0) for h in self.history),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"indices": [...], "weights", "budget", "method", "mode", "fingerprint", "config",
        "history", ...}`` (`unlearning.splits.load_indices` reads ``indices``)."""
        return {
            "indices": [int(i) for i in self.indices.tolist()],
            "size": int(self.indices.numel()),
            "classes": None if self.classes is None else [int(c) for c in self.classes.tolist()],
            "budget": self.config.get("budget"),
            "method": self.config.get("method"),
            "mode": self.config.get("hypergrad"),
            "fingerprint": _jsonable(self.fingerprint),
            "initial_indices": [int(i) for i in self.initial_indices.tolist()],
            "objective": {k: float(v) for k, v in self.objective.items()},
            "seconds": float(self.seconds),
            "totals": self.totals(),
            "config": self.config,
            "history": [_jsonable(h) for h in self.history],
            "weights": [float(x) for x in self.weights.detach().cpu().double().tolist()],
        }

    def save(self, path: str | Path) -> Path:
        """Write `to_dict` as JSON, atomically; ``worstforget unlearn --forget indices:PATH`` reads it."""
        from .io import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, expect: Any = None) -> SearchResult:
        """Read a result written by `save`. ``expect`` (a `unlearning.setup.Prepared`, or a dict like
        `unlearning.splits.data_fingerprint`'s) is the data it will be used on: a result made for another
        dataset, split seed or pool is a ``ValueError`` naming the fix. A missing file is
        ``FileNotFoundError``; a file that is not a search result is ``ValueError``."""
        import json

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"search result {str(path)!r} does not exist: pass the worst_case.json "
                "that worstforget search --out wrote (or SearchResult.save)"
            )
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a search result: not JSON ({err})") from None
        missing = [k for k in ("indices", "weights", "config") if not isinstance(raw, dict) or k not in raw]
        if missing:
            raise ValueError(
                f"{path} is not a search result (no {', '.join(missing)}): pass the worst_case.json that "
                "worstforget search --out wrote (or SearchResult.save)"
            )
        if expect is not None:
            check_made_for(raw, _expected_data(expect), source=str(path))
        return cls(
            indices=torch.tensor(raw["indices"], dtype=torch.int64),
            weights=torch.tensor(raw["weights"], dtype=torch.float64),
            history=raw.get("history", []),
            config=raw.get("config", {}),
            initial_indices=torch.tensor(raw.get("initial_indices", []), dtype=torch.int64),
            objective=raw.get("objective", {}),
            classes=None if raw.get("classes") is None else torch.tensor(raw["classes"], dtype=torch.int64),
            seconds=float(raw.get("seconds", 0.0)),
            fingerprint=raw.get("fingerprint") or {},
        )


def _expected_data(expect: Any) -> dict[str, Any]:
    """A `data_fingerprint` from a `Prepared` (its dataset, split seed and pool) or a mapping of one."""
    if isinstance(expect, dict):
        return expect
    if hasattr(expect, "task") and hasattr(expect, "seed"):
        name = getattr(getattr(expect, "dataset", None), "name", None)
        return data_fingerprint(expect.task.pool, dataset=name, split_seed=expect.seed)
    raise TypeError(
        f"expect must be a prepared experiment or a data fingerprint dict, got {type(expect).__name__}"
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _jsonable(x.item() if x.numel() == 1 else x.tolist())
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x) if math.isfinite(x) else None
    return str(x)


# ------------------------------------------------------------------------------------------- validation
def resolve_budget(budget: float | int, n: int, what: str = "pool") -> int:
    """m from ``budget``: a float in (0, 1) is a fraction of ``n`` (m = round(budget·n), at least 1), an int
    is a count; 1 ≤ m < n is required (``ValueError`` otherwise)."""
    unit = "examples" if what == "pool" else "classes"
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a fraction in (0, 1) or a number of {unit}, got {budget!r}")
    if isinstance(budget, numbers.Integral):
        m = int(budget)
    else:
        b = float(budget)
        if not (math.isfinite(b) and 0 < b < 1):
            raise ValueError(
                f"budget must be a fraction in (0, 1) (e.g. 0.1) or an integer number of {unit}, "
                f"got {budget!r}"
            )
        m = max(1, int(round(b * n)))
    if not 1 <= m < n:
        raise ValueError(
            f"budget must select between 1 and {n - 1} {unit} (the {what} has {n}), got {budget!r} -> {m}"
        )
    return m


def _positive(value: Any, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# ----------------------------------------------------------------------------------------- the problem
def _per_sample_loss(module: nn.Module, theta: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
    out = torch.func.functional_call(module, (theta, buffers), (x,), strict=False)
    return F.cross_entropy(out, y, reduction="none")


def per_sample_losses(
    module: nn.Module, theta: dict, buffers: dict, data: ArrayData, chunk: int = 2048
) -> Tensor:
    """ℓ_i(θ) = CE(f_θ(x_i), y_i) for every row of ``data``, without a graph (chunks of ``chunk``)."""
    with torch.no_grad():
        parts = [
            _per_sample_loss(module, theta, buffers, data.x[i : i + chunk], data.y[i : i + chunk])
            for i in range(0, len(data), chunk)
        ]
    return torch.cat(parts)


def build_problem(
    bound: Any,
    pool: ArrayData,
    buffers: dict[str, Tensor],
    *,
    gamma: float = 0.0,
    reverse: bool = False,
    classwise: bool = False,
    num_classes: int | None = None,
    differentiable: bool = True,
    proximal: float = 0.0,
    anchor: dict[str, Tensor] | None = None,
) -> bilevel.BilevelProblem:
    """The worst-case `bilevel.BilevelProblem` over inner θ (a dict like ``bound.initial_state()[0]``) and
    outer ``{"w": w}``.

    inner_loss(θ, {w}, batch) = ``bound.lower_loss(θ, buffers, batch, weights)`` with batch = (x, y, index)
    of the pool (``None``: the whole pool) and weights = w (data-wise) or w[y] (class-wise);
    outer_loss(θ, {w}) = s·Σ_i w_i ℓ_i(θ) + γ‖w‖² (data-wise) or s·Σ_c w_c·mean_{y_i=c} ℓ_i(θ) + γ‖w‖²
    (class-wise), s = −1 when ``reverse`` else 1. ``differentiable=False`` evaluates ℓ without a graph in
    θ (enough for the first-order rule, which only needs ∂F/∂w; saves the memory of a pool-sized graph).

    ``proximal`` ρ > 0 adds (ρ/2)‖θ − θ_a‖² to the inner loss, θ_a = ``anchor`` (the lower level's start,
    θ_o): its Hessian is then H + ρI, positive definite wherever λ_min(H) > −ρ (near θ_o, where the original
    model fits the pool and H is nearly positive semi-definite), so θ*(w) is locally unique and the
    implicit-function theorem and CG apply.
    """
    _positive(proximal, "proximal", allow_zero=True)
    if proximal and anchor is None:
        raise ValueError("proximal > 0 needs anchor, the weights θ_o the lower level is held near")
    rho = float(proximal)
    anchor = None if not rho else {k: v.detach() for k, v in anchor.items()}
    x_all, y_all = pool.x, pool.y
    n = len(pool)
    full = (x_all, y_all, torch.arange(n, device=x_all.device))
    sign = -1.0 if reverse else 1.0
    module = bound.module
    if classwise:
        k = int(num_classes if num_classes is not None else int(y_all.max()) + 1)
        counts = torch.bincount(y_all, minlength=k).to(torch.float64)
        present = counts > 0
    else:
        k, counts, present = 0, None, None

    def weights_of(w: Tensor) -> Tensor:
        return w[y_all] if classwise else w

    def inner_loss(theta: dict, outer: dict, batch: Any) -> Tensor:
        value = bound.lower_loss(theta, buffers, full if batch is None else batch, weights_of(outer["w"]))
        if anchor is None:
            return value
        prox = sum(((theta[k] - anchor[k]) ** 2).sum() for k in theta)
        return value + 0.5 * rho * prox.to(value.dtype)

    def outer_loss(theta: dict, outer: dict, batch: Any) -> Tensor:
        w = outer["w"]
        if differentiable:
            losses = _per_sample_loss(module, theta, buffers, x_all, y_all)
        else:
            losses = per_sample_losses(module, theta, buffers, pool)
        losses = losses.to(w.dtype)
        if classwise:
            sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add(0, y_all, losses)
            means = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums))
            term = (w * means).sum()
        else:
            term = (w * losses).sum()
        return sign * term + gamma * (w * w).sum()

    return bilevel.BilevelProblem(inner_loss, outer_loss)


def make_solver(
    hypergrad: str,
    *,
    inner_steps: int,
    inner_lr: float,
    damping: float = 0.1,
    cg_iters: int = 10,
    cg_tol: float = DEFAULT_CG_TOL,
    warm_start: bool = True,
) -> Any:
    """The `bilevel` solver of each ``hypergrad`` choice (see the module docstring).

    Implicit: CG on (H + δI)v = ∂_θ F (δ = ``damping``) for at most ``cg_iters`` iterations, to a relative
    residual ``cg_tol``, started from the previous call's v when ``warm_start`` (the other modes have no
    linear solve, and ignore it)."""
    if hypergrad == "first_order":
        return bilevel.FirstOrder(optim.SignSGD(lr=inner_lr), steps=inner_steps, mode="partial")
    if hypergrad == "unrolled":
        return bilevel.Unrolled(optim.SGD(lr=inner_lr), steps=inner_steps)
    if hypergrad == "implicit":
        cg = bilevel.CG(max_iter=cg_iters, tol=cg_tol, damping=damping, on_indefinite="warn")
        return bilevel.Implicit(
            optim.SGD(lr=inner_lr), steps=inner_steps, linear_solver=cg, warm_start=bool(warm_start)
        )
    raise ValueError(f"hypergrad must be one of {', '.join(HYPERGRADS)}, got {hypergrad!r}")


class _CarryWarmStart:
    """``solver`` whose ``reset`` is a no-op: `bilevel.minimize` resets a solver at the start of every run,
    and the search runs one per binarisation segment; this keeps the implicit solver's warm-start v across
    them (the search resets it once, at its start)."""

    def __init__(self, solver: Any) -> None:
        self.solver = solver

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["solver"], name)

    def __repr__(self) -> str:
        return repr(self.solver)

    def hypergrad(self, *args: Any, **kwargs: Any) -> Any:
        return self.solver.hypergrad(*args, **kwargs)

    def reset(self) -> None:
        """Kept on purpose: the warm start carries across segments."""


class PoolBatches:
    """Step → a mini-batch ``(x, y, index)`` of the pool: epoch e is a permutation seeded by (seed, e), so any
    step is reproducible on its own (random access: ``bilevel.minimize`` segments can pick up anywhere).
    ``augment`` (the task's training augmentation) is applied with a per-step seeded generator."""

    def __init__(self, pool: ArrayData, batch_size: int, seed: int, augment: Any = None) -> None:
        self.pool, self.batch_size, self.seed, self.augment = pool, int(batch_size), int(seed), augment
        self.per_epoch = max(1, math.ceil(len(pool) / self.batch_size))
        self._perm: tuple[int, Tensor] | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(1_000_003 * self.seed + 31 * epoch + 17)
            self._perm = (epoch, torch.randperm(len(self.pool), generator=g))
        return self._perm[1]

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        epoch, j = divmod(int(step), self.per_epoch)
        idx = self._permutation(epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        dev = self.pool.x.device
        x = self.pool.x[idx.to(dev)]
        if self.augment is not None:
            x = self.augment(x, torch.Generator().manual_seed(1_000_003 * self.seed + 7 * int(step) + 5))
        return x, self.pool.y[idx.to(dev)], idx.to(dev)


# ------------------------------------------------------------------------------------------------ search
def _resolve_target(target: Any) -> tuple[nn.Module, Task, dict[str, Any]]:
    if isinstance(target, tuple) and len(target) == 2:
        model, task = target
        about: dict[str, Any] = {}
    elif hasattr(target, "original") and hasattr(target, "task"):
        model, task = target.original, target.task
        about = {
            "dataset": getattr(getattr(target, "dataset", None), "name", None),
            "model": getattr(target, "model_name", None),
            "split_seed": getattr(target, "seed", None),
        }
    else:
        raise TypeError(
            "search needs a prepared experiment (unlearning.setup.prepare(...)) or a (model, task) pair, "
            f"got {type(target).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must be an unlearning.data_types.Task, got {type(task).__name__}")
    return model, task, about


def _make_method(method: Any, hparams: dict[str, Any] | None) -> Any:
    from .methods import make
    from .methods.base import Method

    if isinstance(method, Method):
        if hparams:
            raise ValueError(
                "hparams are for a method given by name; set them on the Method instance instead"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name (e.g. 'ft') or a Method, got {type(method).__name__}")
    return make(method, **(hparams or {}))


def _progress_fn(progress: Any, total: int, label: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(update(done), close()) for ``progress``: None = a rich bar unless WORSTFORGET_PROGRESS=0, False = off,
    a callable = called as progress(done, total)."""
    from .loop import progress_bar, progress_enabled

    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    if progress is False or (progress is None and not progress_enabled()):
        return (lambda done: None), (lambda: None)
    bar = progress_bar(enabled=True)
    bar.start()
    tid = bar.add_task(label, total=total)
    return (lambda done: bar.update(tid, completed=done)), bar.stop


def search(
    target: Any,
    method: Any = "ft",
    *,
    budget: float | int = 0.1,
    hypergrad: str = "first_order",
    upper_steps: int = 20,
    inner_steps: int = 10,
    inner_lr: float | None = None,
    upper_lr: float | None = None,
    gamma: float = 0.0,
    binarize_every: int | None = 20,
    classwise: bool = False,
    reverse: bool = False,
    keep_best: bool = True,
    batch_size: int | None = None,
    augment: bool = False,
    hparams: dict[str, Any] | None = None,
    proximal: float | None = None,
    warm_start: bool = True,
    damping: float | None = None,
    cg_iters: int = 10,
    cg_tol: float = DEFAULT_CG_TOL,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Any = None,
) -> SearchResult:
    """Find the worst-case (``reverse``: best-case) forget set of ``method`` (module docstring).

    ``target``: a `unlearning.setup.Prepared` or a ``(model, task)`` pair; the search runs over
    ``task.pool`` from ``model`` (θ_o). ``method``: a name (with ``hparams``) or a `Method`; its
    ``lower_loss`` is the lower level, bound to the model and a task whose forget set is the random start set
    (methods that precompute something from D_f, e.g. SalUn's mask or BS's neighbour labels, use that set).

    ``budget``: the forget-set size m (fraction of the pool in (0, 1) or a count; class-wise: of the classes).
    ``hypergrad``: ``"first_order"`` (signSGD lower level, the paper's rule), ``"unrolled"`` or
    ``"implicit"`` (SGD lower level). ``proximal`` ρ adds (ρ/2)‖θ − θ_o‖² to the lower level (default:
    `DEFAULT_PROXIMAL` for implicit, which needs H + ρI ≻ 0 for its linear solve; 0 otherwise). Implicit
    solves (H + ρI + δI)v = ∂_θ F by CG (``damping`` δ, default 0 with ρ > 0, else 0.1; at most
    ``cg_iters`` iterations, relative residual ``cg_tol``); ``warm_start`` starts each solve from the
    previous upper step's v. The lower level itself restarts from θ_o at every upper step in every mode, so
    F(w) depends on w alone (the paper's procedure). ``inner_steps`` K and
    ``inner_lr`` (default 1e-2 for signSGD, the method's ``lr`` or 0.05 for SGD); ``upper_steps`` and
    ``upper_lr`` (default 30, class-wise 1) of projected gradient descent on w; ``gamma`` γ;
    ``binarize_every`` (None: never). ``keep_best``: return the binary set with the lowest F among those
    evaluated (the random start, each binarisation, the last top-m), so the result is never worse than the
    start; ``objective["last"]`` is F at the last top-m either way. (The first-order rule ignores how the
    lower level reacts to the selection: for RL, which relabels the selected points, F can rise.)
    ``batch_size``: inner mini-batches of the pool (seeded, ``augment``: with the task's augmentation);
    None = full batch. ``seed``: the random start set and the batch order (same seed → same set on CPU).
    ``device``: default, the model's. ``progress``: None (a bar unless ``WORSTFORGET_PROGRESS=0``), False,
    or a callable ``(done, total)``.
    """
    started = time.perf_counter()
    model, task, about = _resolve_target(target)
    if hypergrad not in HYPERGRADS:
        raise ValueError(f"hypergrad must be one of {', '.join(HYPERGRADS)}, got {hypergrad!r}")
    _positive(upper_steps, "upper_steps", integer=True)
    _positive(inner_steps, "inner_steps", integer=True)
    _positive(gamma, "gamma", allow_zero=True)
    if proximal is None:
        proximal = DEFAULT_PROXIMAL if hypergrad == "implicit" else 0.0
    _positive(proximal, "proximal", allow_zero=True)
    if damping is None:
        damping = 0.0 if proximal > 0 else 0.1
    _positive(damping, "damping", allow_zero=True)
    _positive(cg_iters, "cg_iters", integer=True)
    _positive(cg_tol, "cg_tol", allow_zero=True)
    if not isinstance(warm_start, bool):
        raise ValueError(f"warm_start must be True or False, got {warm_start!r}")
    if inner_lr is not None:
        _positive(inner_lr, "inner_lr")
    if upper_lr is not None:
        _positive(upper_lr, "upper_lr")
    if binarize_every is not None:
        _positive(binarize_every, "binarize_every", integer=True)
    if batch_size is not None:
        _positive(batch_size, "batch_size", integer=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    meth = _make_method(method, hparams)
    if inner_lr is None:
        inner_lr = (
            DEFAULT_SIGN_LR if hypergrad == "first_order" else float(getattr(meth, "lr", DEFAULT_SGD_LR))
        )
    if upper_lr is None:
        upper_lr = DEFAULT_UPPER_LR_CLASSWISE if classwise else DEFAULT_UPPER_LR

    from .setup import resolve_device

    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    pool = task.pool.to(dev)
    n = len(pool)
    labels = pool.y
    classes_present = sorted(set(labels.cpu().tolist()))
    num_classes = task.num_classes
    if classwise:
        m = resolve_budget(budget, len(classes_present), what="set of classes")
        g = torch.Generator().manual_seed(1_000_003 * int(seed) + 4242)
        start_classes = torch.tensor(classes_present)[torch.randperm(len(classes_present), generator=g)[:m]]
        start_classes = start_classes.sort().values
        start = torch.isin(labels.cpu(), start_classes).nonzero().squeeze(1)
        size = num_classes
    else:
        m = resolve_budget(budget, n)
        start = forget_indices(f"random:{m / n!r}", pool, int(seed))  # the random:F set of the same seed
        if start.numel() != m:  # rounding guard; never expected
            start = start[:m]
        start_classes = None
        size = n
    if start.numel() >= n:
        raise ValueError("budget selects every pool example: nothing would be retained; lower it")

    bind_task = Task(
        pool=pool,
        forget_index=start,
        val=task.val.to(dev),
        test=task.test.to(dev),
        num_classes=task.num_classes,
        augment=task.augment,
        batch_size=task.batch_size,
        seed=task.seed,
        name="worst-case search start",
    )
    work = model if next(model.parameters()).device == dev else _copy_to(model, dev)
    try:
        bound = meth.bind(work, bind_task)
        theta0, buffers = bound.initial_state()
    except NoLowerLevelError as err:
        raise ValueError(
            f"method {meth.name!r} has no lower-level objective, so it cannot be searched: {err}"
        ) from None

    problem = build_problem(
        bound,
        pool,
        buffers,
        gamma=float(gamma),
        reverse=reverse,
        classwise=classwise,
        num_classes=num_classes,
        differentiable=hypergrad != "first_order",
        proximal=float(proximal),
        anchor=theta0,
    )
    solver = make_solver(
        hypergrad,
        inner_steps=inner_steps,
        inner_lr=float(inner_lr),
        damping=float(damping),
        cg_iters=cg_iters,
        cg_tol=float(cg_tol),
        warm_start=warm_start,
    )
    if hypergrad == "implicit":
        solver = _CarryWarmStart(solver)  # v carries across binarisation segments (a fresh solver here)
    constraint = CappedSimplex(m)
    w = torch.zeros(size, dtype=torch.float64, device=dev)
    w[start_classes.to(dev) if classwise else start.to(dev)] = 1.0
    batches = (
        None
        if batch_size is None
        else PoolBatches(pool, batch_size, int(seed), task.augment if augment else None)
    )
    per_step = inner_steps + 1

    history: list[dict[str, Any]] = []
    tops: list[Tensor] = []
    binary_points: list[tuple[int, Tensor]] = [(0, w.clone())]  # (history index evaluating F there, w)
    state = {"w": w, "top": top_k(w, m).bool(), "t": time.perf_counter()}
    update, close = _progress_fn(progress, upper_steps, f"worst-case search ({meth.name}, {hypergrad})")

    def callback(offset: int) -> Callable[[int, dict, Any], bool]:
        def record(step: int, outer: dict, hg: Any) -> bool:
            prev = state["w"]
            new = outer["w"]
            objective = float(hg.info["outer_loss"])
            reg = float(gamma) * float((prev * prev).sum())
            top = top_k(new, m).bool()
            now = time.perf_counter()
            entry = {
                "step": offset + step + 1,
                "objective": objective,
                "forget_loss": (objective - reg) * (-1.0 if reverse else 1.0),
                "weight_sum": float(new.sum()),
                "changed": int((top & ~state["top"]).sum()),
                "overlap_previous": float((top & state["top"]).sum()) / m,
                "grad_norm": float(hg.grad["w"].norm()),
                "inner_loss": hg.info.get("inner_loss"),
                "inner_grad_norm": hg.info.get("inner_grad_norm"),
                "hypergrad_seconds": float(hg.info.get("seconds", 0.0)),
                "seconds": now - state["t"],
                "binarized": False,
            }
            for key in ("residual", "iterations", "hvp_count", "indefinite", "warm_started"):
                if key in hg.info and hg.info[key] is not None:
                    entry[key] = hg.info[key]
            history.append(entry)
            tops.append(top.nonzero().squeeze(1))
            state.update(w=new, top=top, t=now)
            update(offset + step + 1)
            return False

        return record

    segment = binarize_every or upper_steps
    try:
        with seeded(int(seed), dev):
            done = 0
            while done < upper_steps:
                steps = min(segment, upper_steps - done)
                off = done * per_step
                result = bilevel.minimize(
                    problem,
                    solver,
                    {"w": w},
                    optim.SGD(lr=float(upper_lr)),
                    steps,
                    constraint=constraint,
                    callback=callback(done),
                    inner_init=theta0,
                    inner_data=None if batches is None else (lambda t, o=off: batches(o + t)),
                    warm_start_inner=False,
                )
                w = result.outer["w"]
                done += steps
                if binarize_every is not None and done < upper_steps:
                    w = top_k(w, m)  # periodic hard binarisation: w ← top-m(w)
                    history[-1]["binarized"] = True
                    state["w"] = w
                    binary_points.append((len(history), w.clone()))  # the next step evaluates F here
            final = top_k(w, m)
            objective_final = _objective_at(problem, solver, theta0, final, batches)
            objective_last = objective_final
            if keep_best:  # the best binary set met: the start, each binarisation, the end
                candidates = [(objective_final, final)]
                candidates += [(history[i]["objective"], wb) for i, wb in binary_points if i < len(history)]
                best_value, best = min(candidates, key=lambda c: c[0])
                if best_value < objective_final:
                    final, objective_final = best, best_value
    finally:
        close()

    final_set = final.bool().nonzero().squeeze(1)
    final_cpu = torch.zeros(size, dtype=torch.bool)
    final_cpu[final_set.cpu()] = True
    for entry, top in zip(history, tops):
        entry["overlap_final"] = float(final_cpu[top.cpu()].sum()) / m
    if classwise:
        chosen_classes = final_set.cpu().sort().values
        indices = torch.isin(labels.cpu(), chosen_classes).nonzero().squeeze(1)
    else:
        chosen_classes = None
        indices = final_set.cpu().sort().values
    config = {
        **{k: v for k, v in about.items() if v is not None},
        "method": meth.name,
        "hparams": _jsonable(meth.hparams()),
        "budget": budget if isinstance(budget, (int, float)) else float(budget),
        "size": m,
        "unit": "classes" if classwise else "examples",
        "pool_size": n,
        "hypergrad": hypergrad,
        "solver": repr(solver),
        "upper_steps": upper_steps,
        "inner_steps": inner_steps,
        "inner_lr": float(inner_lr),
        "upper_lr": float(upper_lr),
        "gamma": float(gamma),
        "binarize_every": binarize_every,
        "classwise": bool(classwise),
        "reverse": bool(reverse),
        "keep_best": bool(keep_best),
        "batch_size": batch_size,
        "augment": bool(augment),
        "proximal": float(proximal),
        "warm_start": bool(warm_start) if hypergrad == "implicit" else None,
        "damping": float(damping) if hypergrad == "implicit" else None,
        "cg_iters": int(cg_iters) if hypergrad == "implicit" else None,
        "cg_tol": float(cg_tol) if hypergrad == "implicit" else None,
        "seed": int(seed),
        "device": str(dev),
    }
    return SearchResult(
        indices=indices,
        weights=w.detach().cpu(),
        history=history,
        config=config,
        initial_indices=start.cpu().sort().values,
        objective={"initial": history[0]["objective"], "final": objective_final, "last": objective_last},
        classes=chosen_classes,
        seconds=time.perf_counter() - started,
        fingerprint=data_fingerprint(pool, dataset=about.get("dataset"), split_seed=about.get("split_seed")),
    )


def _objective_at(
    problem: bilevel.BilevelProblem, solver: Any, theta0: dict, w: Tensor, batches: Any
) -> float:
    """F(w) = f(θ_K(w), w): the lower level run from θ_0 with the solver's optimizer and steps."""
    theta = bilevel.solve_inner(problem, solver.optimizer, solver.steps, theta0, {"w": w}, inner_data=batches)
    with torch.no_grad():
        return float(problem.outer_loss(theta, {"w": w}, None))


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device)


def forget_loss(model: nn.Module, data: ArrayData, index: Tensor) -> float:
    """mean_{i ∈ index} ℓ_i(θ): the mean cross-entropy of ``model`` (eval mode) on pool rows ``index``."""
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        idx = index.to(data.x.device)
        with torch.no_grad():
            out = model(data.x[idx].to(dev))
            return float(F.cross_entropy(out, data.y[idx].to(dev)))
    finally:
        model.train(was)
