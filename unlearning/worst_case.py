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

import dataclasses
import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bilevel
from bilevel import CappedSimplex, optim, top_k
from bilevel.validate import number, one_of

from .data_types import ArrayData, Task
from .io import jsonable
from .methods.base import NoLowerLevelError
from .rng import seeded
from .splits import check_made_for, data_fingerprint, forget_indices

__all__ = [
    "HYPERGRADS",
    "SearchConfig",
    "SearchResult",
    "search",
    "build_problem",
    "make_solver",
    "resolve_budget",
]

HYPERGRADS = ("first_order", "unrolled", "implicit")
#: how the final set is chosen: "best" (the binary set of lowest F met: the start, each binarisation, the
#: last top-m; the default) or "published" (top-m of the last w, as the published code does)
FINAL_RULES = ("best", "published")
#: the lower level's BatchNorm: "batch" (normalise with the statistics of the batch evaluated, running
#: statistics neither used nor updated, as the published lower level trains) or "running" (eval mode: the
#: running statistics carried in the buffers, never updated)
BATCHNORM_POLICIES = ("batch", "running")
#: the most sets of classes `search(..., exhaustive=True)` evaluates (one lower-level run each)
MAX_EXHAUSTIVE = 5000

#: Defaults chosen on digits/MLP (docs/worst_case.md): the signSGD step of the paper's rule, and the
#: projected-descent step on w (the per-step change of a weight is at most ``upper_lr`` × the spread of ℓ_i).
DEFAULT_SIGN_LR = 1e-2
DEFAULT_SGD_LR = 0.05
DEFAULT_UPPER_LR = 30.0
#: class-wise, a class's mean loss after the whole class left the retain set is large (≈ 10 on digits), and
#: steps of 30 jump between vertices of the simplex; 1.0 lets the weights settle.
DEFAULT_UPPER_LR_CLASSWISE = 1.0
#: method-aware upper steps (data-wise; the method's name → ``upper_lr``). FT's step of 30 moves a weight by
#: at most 30 × the spread of ℓ_i (ℓ_i ~ 1e-3 to 1e-2 after FT on digits: ≈ 0.3 per step); RL and SalUn
#: relabel the selected points, so their ℓ_i after unlearning are ~100 times larger (≈ 1 on average) and
#: FT's step overshoots (F rises; RL 127 → 421 at the last top-m on seed 0, and the best set met is the
#: random start). Measured on digits/MLP, seeds 0-2, first-order rule (docs/worst_case.md, "Method-aware
#: defaults"): RL at 0.3 lowers F by 35-73% and raises RL's Avg. Gap on all three seeds; SalUn at 1 lowers F
#: by 12-48% and raises SalUn's gap on all three (at 0.3 F falls further but the gap rises on one seed).
METHOD_UPPER_LR: dict[str, float] = {"rl": 0.3, "salun": 1.0}
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
    ``per_class`` (exhaustive class-wise search only; written as ``per_class``): F at every set of m classes,
    keyed by the classes joined with commas (``"3"``, or ``"1,7"`` for m = 2); ``history`` is then empty.
    ``config["final_rule"]`` names the rule that chose the set ("best", "published" or "exhaustive").
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
    per_class: dict[str, float] | None = None

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
            "fingerprint": jsonable(self.fingerprint),
            "initial_indices": [int(i) for i in self.initial_indices.tolist()],
            "objective": {k: float(v) for k, v in self.objective.items()},
            "seconds": float(self.seconds),
            "totals": self.totals(),
            "config": self.config,
            "history": [jsonable(h) for h in self.history],
            "weights": [float(x) for x in self.weights.detach().cpu().double().tolist()],
            **(
                {}
                if self.per_class is None
                else {"per_class": {k: float(v) for k, v in self.per_class.items()}}
            ),
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
        _check_result_fields(raw, path)
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
            per_class=_per_class(raw.get("per_class")),
        )


def _per_class(value: Any) -> dict[str, float] | None:
    """The ``per_class`` objectives of an exhaustive class-wise result (None for the other searches)."""
    return None if value is None else {str(k): float(v) for k, v in value.items()}


def _list_of(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``value`` is a list of ``kind`` values (booleans excluded: JSON ``true`` is not the number 1)."""
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _positions(raw: Any, key: str, path: Path, *, empty: bool = False) -> list[int]:
    """``raw[key]`` as a list of distinct non-negative integers (JSON ``true``/``false`` refused)."""
    value = raw.get(key, [] if empty else None)
    if not _list_of(value, int):
        raise ValueError(f"{path}: {key!r} must be a list of integer positions, got {str(value)[:60]}")
    if (not value and not empty) or len(set(value)) != len(value) or any(v < 0 for v in value):
        raise ValueError(f"{path}: {key!r} must hold distinct non-negative positions (the file was edited)")
    return value


def _check_result_fields(raw: dict[str, Any], path: Path) -> None:
    """The fields of a saved search result agree with each other and have their types: ``indices`` and
    ``initial_indices`` (same size when data-wise), ``size``, ``weights`` (numbers), ``classes`` (integers,
    present exactly when the search was class-wise), ``seconds`` (a number), ``config`` (an object); a
    ``ValueError`` naming the file and the field otherwise (a hand-edited or cut-short set is never used)."""
    indices = _positions(raw, "indices", path)
    initial = _positions(raw, "initial_indices", path, empty=True)
    # data-wise, the start set and the result are m examples each; class-wise they are m classes' examples,
    # whose counts differ from class to class
    if raw.get("classes") is None and initial and len(initial) != len(indices):
        raise ValueError(
            f"{path}: {len(indices)} indices but {len(initial)} initial_indices (the file was cut or edited)"
        )
    if "size" in raw and raw["size"] != len(indices):
        raise ValueError(f"{path}: 'size' is {raw['size']!r} but it holds {len(indices)} indices (edited?)")
    if not _list_of(raw["weights"], (int, float)):
        raise ValueError(f"{path}: 'weights' must be a list of numbers")
    config = raw["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' must be an object, got {type(config).__name__}")
    classes = raw.get("classes")
    if classes is not None and not _list_of(classes, int):
        raise ValueError(f"{path}: 'classes' must be null or a list of integer classes")
    if "classwise" in config and bool(config["classwise"]) != (classes is not None):
        kind = "class-wise" if config["classwise"] else "data-wise"
        raise ValueError(
            f"{path}: the search was {kind} but 'classes' is {json.dumps(classes)} (the file was edited): "
            "restore it or search again"
        )
    seconds = raw.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"{path}: 'seconds' must be a number, got {json.dumps(seconds)}")


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


# ------------------------------------------------------------------------------------------- validation
def _check_budget(budget: Any, unit: str) -> None:
    """What can be checked of ``budget`` without the pool: a number, and a fraction in (0, 1) if not an
    integer (``unit``: "examples" or "classes", for the message)."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a fraction in (0, 1) or a number of {unit}, got {budget!r}")
    if not isinstance(budget, numbers.Integral):
        b = float(budget)
        if not (math.isfinite(b) and 0 < b < 1):
            raise ValueError(
                f"budget must be a fraction in (0, 1) (e.g. 0.1) or an integer number of {unit}, "
                f"got {budget!r}"
            )


def resolve_budget(budget: float | int, n: int, what: str = "pool") -> int:
    """m from ``budget``: a float in (0, 1) is a fraction of ``n`` (m = round(budget·n), at least 1), an int
    is a count; 1 ≤ m < n is required (``ValueError`` otherwise)."""
    unit = "examples" if what == "pool" else "classes"
    _check_budget(budget, unit)
    m = int(budget) if isinstance(budget, numbers.Integral) else max(1, int(round(float(budget) * n)))
    if not 1 <= m < n:
        raise ValueError(
            f"budget must select between 1 and {n - 1} {unit} (the {what} has {n}), got {budget!r} -> {m}"
        )
    return m


#: SearchConfig's numeric fields: name -> (an integer?, 0 allowed?), in the order they are checked (a number
#: > 0, or >= 0 where 0 is allowed: `bilevel.validate.number`)
_NUMBERS: dict[str, tuple[bool, bool]] = {
    "upper_steps": (True, False),
    "inner_steps": (True, False),
    "gamma": (False, True),
    "proximal": (False, True),
    "damping": (False, True),
    "cg_iters": (True, False),
    "cg_tol": (False, True),
    "inner_lr": (False, False),
    "upper_lr": (False, False),
    "binarize_every": (True, False),
    "batch_size": (True, False),
}
#: the numeric fields where None is allowed (a default `SearchConfig.resolved` fills in, or "never"/"full")
_DEFAULTED = frozenset({"proximal", "damping", "inner_lr", "upper_lr", "binarize_every", "batch_size"})


@dataclass(frozen=True)
class SearchConfig:
    """Every option of `search`, checked when built (a bad value is a ``ValueError`` naming the field).

    ``budget`` m (a fraction of the pool in (0, 1) or a count; class-wise: of the classes; checked against
    the pool by `resolve_budget` when the search starts), ``hypergrad`` (one of `HYPERGRADS`),
    ``upper_steps`` and ``upper_lr`` η_w of projected descent on w, ``inner_steps`` K and ``inner_lr`` of the
    lower level, ``gamma`` γ, ``binarize_every`` (None: never), ``classwise``, ``reverse``, ``keep_best``,
    ``batch_size`` (None: the full pool) and ``augment`` of the lower level, implicit mode's ``proximal`` ρ,
    ``warm_start``, ``damping`` δ, ``cg_iters`` and ``cg_tol``, ``seed`` (the start set and the batch
    order), ``final_rule`` (`FINAL_RULES`; None: "best" when ``keep_best`` else "published"; given, it sets
    ``keep_best``), ``exhaustive`` (class-wise only: F at every set of m classes instead of the relaxed
    search) and ``batchnorm`` (`BATCHNORM_POLICIES`, the lower level's BatchNorm), ``graph`` (the
    hypergradient as one CUDA graph: None = on CUDA when the solver can be captured, False = eagerly; see
    `bilevel.minimize`; not part of the record).
    ``None`` in ``inner_lr``, ``upper_lr``, ``proximal``, ``damping`` means "the default", which `resolved`
    fills in (it needs the method for ``inner_lr``). `search`'s docstring gives the meanings.
    """

    budget: float | int = 0.1
    hypergrad: str = "first_order"
    upper_steps: int = 20
    inner_steps: int = 10
    inner_lr: float | None = None
    upper_lr: float | None = None
    gamma: float = 0.0
    binarize_every: int | None = 20
    classwise: bool = False
    reverse: bool = False
    keep_best: bool = True
    batch_size: int | None = None
    augment: bool = False
    proximal: float | None = None
    warm_start: bool = True
    damping: float | None = None
    cg_iters: int = 10
    cg_tol: float = DEFAULT_CG_TOL
    seed: int = 0
    final_rule: str | None = None
    exhaustive: bool = False
    batchnorm: str = "batch"
    graph: bool | None = None

    def __post_init__(self) -> None:
        one_of(self.hypergrad, "hypergrad", HYPERGRADS)
        if self.graph not in (None, True, False):
            raise ValueError(f"graph must be None, True or False, got {self.graph!r}")
        if self.final_rule is not None:
            one_of(self.final_rule, "final_rule", FINAL_RULES)
        one_of(self.batchnorm, "batchnorm", BATCHNORM_POLICIES)
        for name, (integer, allow_zero) in _NUMBERS.items():
            value = getattr(self, name)
            if value is not None or name not in _DEFAULTED:
                number(value, name, integer=integer, allow_zero=allow_zero)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("warm_start", "classwise", "reverse", "keep_best", "augment", "exhaustive"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_budget(self.budget, "classes" if self.classwise else "examples")
        if self.exhaustive and not self.classwise:
            raise ValueError(
                "exhaustive must be False unless classwise=True: the exact search runs the lower level once "
                "per set of classes (pass classwise=True)"
            )
        # plain Python numbers (a NumPy scalar, or an int where a float belongs, becomes the float), so the
        # record `asdict` makes of this config holds what the search used
        for name, (integer, _) in _NUMBERS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value) if integer else float(value))
        object.__setattr__(self, "seed", int(self.seed))

    def resolved(self, method: Any = None) -> SearchConfig:
        """This config with its defaults filled in, the one place they are decided:

        ``proximal`` ρ = `DEFAULT_PROXIMAL` for implicit (its CG solve needs H + ρI ≻ 0), else 0;
        ``damping`` δ = 0 when ρ > 0, else 0.1; ``inner_lr`` = `DEFAULT_SIGN_LR` for the first-order rule
        (signSGD), else ``method.lr`` (`DEFAULT_SGD_LR` when it has none); ``upper_lr`` =
        `METHOD_UPPER_LR` of the method, else `DEFAULT_UPPER_LR` (class-wise `DEFAULT_UPPER_LR_CLASSWISE`);
        ``final_rule`` from ``keep_best`` (and ``keep_best`` from a given ``final_rule``)."""
        proximal = self.proximal
        if proximal is None:
            proximal = DEFAULT_PROXIMAL if self.hypergrad == "implicit" else 0.0
        damping = self.damping if self.damping is not None else (0.0 if proximal > 0 else 0.1)
        inner_lr = self.inner_lr
        if inner_lr is None:
            first_order = self.hypergrad == "first_order"
            inner_lr = DEFAULT_SIGN_LR if first_order else float(getattr(method, "lr", DEFAULT_SGD_LR))
        upper_lr = self.upper_lr
        if upper_lr is None:
            upper_lr = _default_upper_lr(self, method)
        rule = self.final_rule or ("best" if self.keep_best else "published")
        return replace(
            self,
            proximal=proximal,
            damping=damping,
            inner_lr=inner_lr,
            upper_lr=upper_lr,
            final_rule=rule,
            keep_best=rule == "best",
        )

    def record(self) -> dict[str, Any]:
        """``asdict(self)`` as a result records it: the implicit-only options (``warm_start``, ``damping``,
        ``cg_iters``, ``cg_tol``) are None in the other modes, which have no linear solve."""
        fields = asdict(self)
        fields.pop("graph")  # how the hypergradient runs (CUDA graph or eager), not what the search computes
        if self.hypergrad != "implicit":
            fields.update(warm_start=None, damping=None, cg_iters=None, cg_tol=None)
        return fields


def _default_upper_lr(cfg: SearchConfig, method: Any) -> float:
    """``upper_lr`` when none is given: class-wise `DEFAULT_UPPER_LR_CLASSWISE`; data-wise the method's entry
    of `METHOD_UPPER_LR` (by its ``name``), else `DEFAULT_UPPER_LR`."""
    if cfg.classwise:
        return DEFAULT_UPPER_LR_CLASSWISE
    return METHOD_UPPER_LR.get(str(getattr(method, "name", "")), DEFAULT_UPPER_LR)


def _config_of(config: SearchConfig | None, options: dict[str, Any]) -> SearchConfig:
    """``config`` (default: `SearchConfig()`) with the keyword ``options`` set on it."""
    if config is not None and not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got {type(config).__name__}")
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(SearchConfig)})
    if unknown:
        raise TypeError(
            f"search() got an unexpected keyword argument {unknown[0]!r}; its options are "
            "SearchConfig's fields, hparams, device and progress"
        )
    return SearchConfig(**options) if config is None else replace(config, **options)


# ----------------------------------------------------------------------------------------- the problem
def _per_sample_loss(module: nn.Module, theta: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
    out = torch.func.functional_call(module, (theta, buffers), (x,), strict=False)
    return F.cross_entropy(out, y, reduction="none")


def per_sample_losses(
    module: nn.Module, theta: dict, buffers: dict, data: ArrayData, chunk: int = 2048
) -> Tensor:
    """ℓ_i(θ) = CE(f_θ(x_i), y_i) for every row of ``data``, without a graph (chunks of ``chunk``; one chunk
    when ``module`` normalises with batch statistics, so every ℓ_i sees the statistics of the whole pool, as
    the differentiable path does)."""
    if uses_batch_statistics(module):
        chunk = max(1, len(data))
    with torch.no_grad():
        parts = [
            _per_sample_loss(module, theta, buffers, data.x[i : i + chunk], data.y[i : i + chunk])
            for i in range(0, len(data), chunk)
        ]
    return torch.cat(parts)


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``module`` normalises with the statistics of its input batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())


def set_batchnorm_policy(module: nn.Module, policy: str) -> nn.Module:
    """Put ``module``'s BatchNorm layers under ``policy`` (in place; see `BATCHNORM_POLICIES`).

    ``"batch"``: BN layers in training mode with ``track_running_stats=False``, so
    x̂ = (x − μ_B)/√(σ²_B + ε) with the mean and (biased) variance of the batch evaluated, differentiable in
    θ, and no buffer is read or written (the lower level stays a pure function of θ and w). ``"running"``:
    eval mode, x̂ = (x − μ)/√(σ² + ε) with the running statistics of the buffers (for a freshly reset
    network μ = 0, σ² = 1: no normalisation).
    Models without BatchNorm are unchanged by either."""
    one_of(policy, "batchnorm", BATCHNORM_POLICIES)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            batch = policy == "batch"
            m.train(batch)
            m.track_running_stats = not batch
    return module


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
    batchnorm: str = "batch",
) -> bilevel.BilevelProblem:
    """The worst-case `bilevel.BilevelProblem` over inner θ (a dict like ``bound.initial_state()[0]``) and
    outer ``{"w": w}``.

    inner_loss(θ, {w}, batch) = ``bound.lower_loss(θ, buffers, batch, weights)`` with batch = (x, y, index)
    of the pool (``None``: the whole pool) and weights = w (data-wise) or w[y] (class-wise);
    outer_loss(θ, {w}) = s·(Σ_i w_i ℓ_i(θ) + γ‖w‖²) (data-wise) or s·(Σ_c w_c·mean_{y_i=c} ℓ_i(θ) + γ‖w‖²)
    (class-wise), s = −1 when ``reverse`` else 1 (the published ``reverse_optimize_select`` ascends
    Σ w_i ℓ_i + γ‖w‖², so the γ term flips with the sign). ``differentiable=False`` evaluates ℓ without a
    graph in θ (enough for the first-order rule, which only needs ∂F/∂w; saves the memory of a pool-sized
    graph).

    ``batchnorm``: the policy of the bound module's BatchNorm layers in the lower and the upper level
    (`set_batchnorm_policy`; ``"batch"``, as the published code trains, or ``"running"``); the module is
    changed in place.

    ``proximal`` ρ > 0 adds (ρ/2)‖θ − θ_a‖² to the inner loss, θ_a = ``anchor`` (the lower level's start,
    θ_o): its Hessian is then H + ρI, positive definite wherever λ_min(H) > −ρ (near θ_o, where the original
    model fits the pool and H is nearly positive semi-definite), so θ*(w) is locally unique and the
    implicit-function theorem and CG apply.
    """
    number(proximal, "proximal", allow_zero=True)
    if proximal and anchor is None:
        raise ValueError("proximal > 0 needs anchor, the weights θ_o the lower level is held near")
    rho = float(proximal)
    anchor = None if not rho else {k: v.detach() for k, v in anchor.items()}
    set_batchnorm_policy(bound.module, batchnorm)
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
        return sign * (term + gamma * (w * w).sum())

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
) -> bilevel.Solver:
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
    config: SearchConfig | None = None,
    hparams: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: Any = None,
    **options: Any,
) -> SearchResult:
    """Find the worst-case (``reverse``: best-case) forget set of ``method`` (module docstring).

    ``target``: a `unlearning.setup.Prepared` or a ``(model, task)`` pair; the search runs over
    ``task.pool`` from ``model`` (θ_o). ``method``: a name (with ``hparams``) or a `Method`; its
    ``lower_loss`` is the lower level, bound to the model and a task whose forget set is the random start set
    (methods that precompute something from D_f, e.g. SalUn's mask or BS's neighbour labels, use that set).

    The options are a `SearchConfig`: ``config=``, or its fields as keywords (``search(p, "ft",
    budget=0.05)`` is ``search(p, "ft", config=SearchConfig(budget=0.05))``; keywords given with ``config``
    replace its fields). ``budget``: the forget-set size m (fraction of the pool in (0, 1) or a count;
    class-wise: of the classes).
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

    Phases: `_set_up` (start set, bound problem, solver), `_upper_loop` (segments of `bilevel.minimize`
    between binarisations, recorded by `_Recorder`), `_final_set` (top-m, keep_best) and `_result`.
    """
    started = time.perf_counter()
    model, task, about = _resolve_target(target)
    run = _set_up(model, task, about, method, _config_of(config, options), hparams, device)
    cfg = run.config
    if cfg.exhaustive:
        return _exhaustive(run, progress, started)
    recorder = _Recorder(run, progress)
    try:
        with seeded(cfg.seed, run.device):
            w = _upper_loop(run, recorder)
            final, objective = _final_set(run, w, recorder)
    finally:
        recorder.close()
    return _result(run, recorder.history, recorder.tops, w, final, objective, time.perf_counter() - started)


# ------------------------------------------------------------------------------------ search: set-up
@dataclass
class _Run:
    """What the set-up hands to the upper loop and the finalisation: the resolved ``config``, the
    ``method``, the target's ``about`` (dataset, model, split seed), the ``device`` and ``pool`` (on it),
    m = ``budget_size``, the length ``size`` of w, the random ``start`` set (pool positions; class-wise
    also ``start_classes``), the bound ``problem``, the ``solver``, θ_o = ``theta0`` and the lower level's
    mini-batches (``batches``, None: the full pool)."""

    config: SearchConfig
    method: Any
    about: dict[str, Any]
    device: torch.device
    pool: ArrayData
    budget_size: int
    size: int
    start: Tensor
    start_classes: Tensor | None
    problem: bilevel.BilevelProblem
    solver: bilevel.Solver
    theta0: dict[str, Tensor]
    batches: PoolBatches | None

    def initial_w(self) -> Tensor:
        """w_0: the indicator of the start set (of its classes, class-wise), float64."""
        w = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        w[self.start_classes.to(self.device) if self.config.classwise else self.start.to(self.device)] = 1.0
        return w


def _set_up(
    model: nn.Module,
    task: Task,
    about: dict[str, Any],
    method: Any,
    config: SearchConfig,
    hparams: dict[str, Any] | None,
    device: str | torch.device | None,
) -> _Run:
    """The method (defaults resolved against it), the device, the random start set, the method bound to the
    model and a task forgetting that set, the bi-level problem and the solver."""
    from .setup import resolve_device

    meth = _make_method(method, hparams)
    cfg = config.resolved(meth)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    moved = task.to(dev)
    m, start, start_classes, size = _start_set(moved.pool, cfg, task.num_classes)
    bind_task = replace(moved, forget_index=start, forget_class=None, name="worst-case search start")
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
        moved.pool,
        buffers,
        gamma=cfg.gamma,
        reverse=cfg.reverse,
        classwise=cfg.classwise,
        num_classes=task.num_classes,
        differentiable=cfg.hypergrad != "first_order",
        proximal=cfg.proximal,
        anchor=theta0,
        batchnorm=cfg.batchnorm,
    )
    solver = make_solver(
        cfg.hypergrad,
        inner_steps=cfg.inner_steps,
        inner_lr=cfg.inner_lr,
        damping=cfg.damping,
        cg_iters=cfg.cg_iters,
        cg_tol=cfg.cg_tol,
        warm_start=cfg.warm_start,
    )
    augment = task.augment if cfg.augment else None
    batches = None if cfg.batch_size is None else PoolBatches(moved.pool, cfg.batch_size, cfg.seed, augment)
    return _Run(
        cfg, meth, about, dev, moved.pool, m, size, start, start_classes, problem, solver, theta0, batches
    )


def _start_set(
    pool: ArrayData, cfg: SearchConfig, num_classes: int
) -> tuple[int, Tensor, Tensor | None, int]:
    """``(m, start, start_classes, size)``: the budget m, the random start set of the seed (pool positions:
    the ``random:m/N`` set of `unlearning.splits.forget_indices`; class-wise every example of m random
    classes, also returned), and the length of w (N, class-wise the number of classes)."""
    n = len(pool)
    labels = pool.y.cpu()
    if cfg.classwise:
        classes_present = sorted(set(labels.tolist()))
        m = resolve_budget(cfg.budget, len(classes_present), what="set of classes")
        g = torch.Generator().manual_seed(1_000_003 * cfg.seed + 4242)
        start_classes = torch.tensor(classes_present)[torch.randperm(len(classes_present), generator=g)[:m]]
        start_classes = start_classes.sort().values
        start = torch.isin(labels, start_classes).nonzero().squeeze(1)
        size = num_classes
    else:
        m = resolve_budget(cfg.budget, n)
        start = forget_indices(f"random:{m / n!r}", pool, cfg.seed)  # the random:F set of the same seed
        if start.numel() != m:  # rounding guard; never expected
            start = start[:m]
        start_classes = None
        size = n
    if start.numel() >= n:
        raise ValueError("budget selects every pool example: nothing would be retained; lower it")
    return m, start, start_classes, size


# ------------------------------------------------------------------------------- search: the upper loop
class _Recorder:
    """The search's history: one entry per upper step (fields in `SearchResult`), the top-m set after each
    step (for the overlaps with the final set), and the binary points met (the start and every binarised w,
    with the index of the history entry that evaluates F there); it also drives the progress display."""

    def __init__(self, run: _Run, progress: Any) -> None:
        cfg = run.config
        self.run = run
        self.history: list[dict[str, Any]] = []
        self.tops: list[Tensor] = []
        self.w = run.initial_w()
        self.binary_points: list[tuple[int, Tensor]] = [(0, self.w.clone())]
        self.top = top_k(self.w, run.budget_size).bool()
        self.t = time.perf_counter()
        label = f"worst-case search ({run.method.name}, {cfg.hypergrad})"
        self.update, self.close = _progress_fn(progress, cfg.upper_steps, label)

    def callback(self, offset: int) -> Callable[[int, dict, bilevel.Hypergrad], bool]:
        """`bilevel.minimize`'s callback for a segment starting after ``offset`` upper steps."""

        def record(step: int, outer: dict, hg: bilevel.Hypergrad) -> bool:
            self.record(offset + step + 1, outer["w"], hg)
            return False

        return record

    def record(self, step: int, new: Tensor, hg: bilevel.Hypergrad) -> None:
        """Upper step ``step`` (from 1) moved w to ``new``; ``hg`` is the hypergradient taken at the old w,
        so its outer loss is F(w_old), and Σ w_i ℓ_i = s·F − γ‖w_old‖²."""
        cfg, m = self.run.config, self.run.budget_size
        objective = float(hg.info["outer_loss"])
        reg = cfg.gamma * float((self.w * self.w).sum())
        top = top_k(new, m).bool()
        now = time.perf_counter()
        entry = {
            "step": step,
            "objective": objective,
            "forget_loss": objective * (-1.0 if cfg.reverse else 1.0) - reg,
            "weight_sum": float(new.sum()),
            "changed": int((top & ~self.top).sum()),
            "overlap_previous": float((top & self.top).sum()) / m,
            "grad_norm": float(hg.grad["w"].norm()),
            "inner_loss": hg.info.get("inner_loss"),
            "inner_grad_norm": hg.info.get("inner_grad_norm"),
            "hypergrad_seconds": float(hg.info.get("seconds", 0.0)),
            "seconds": now - self.t,
            "binarized": False,
        }
        for key in ("residual", "iterations", "hvp_count", "indefinite", "warm_started"):
            if key in hg.info and hg.info[key] is not None:
                entry[key] = hg.info[key]
        self.history.append(entry)
        self.tops.append(top.nonzero().squeeze(1))
        self.w, self.top, self.t = new, top, now
        self.update(step)

    def binarized(self, w: Tensor) -> None:
        """The last step's w was replaced by its top-m indicator ``w``; the next step evaluates F there."""
        self.history[-1]["binarized"] = True
        self.w = w
        self.binary_points.append((len(self.history), w.clone()))


def _upper_loop(run: _Run, recorder: _Recorder) -> Tensor:
    """Projected descent w ← Π_S̃(w − η_w ∇F) for ``upper_steps`` steps, in segments of ``binarize_every``
    steps (one `bilevel.minimize` run each) with w ← top-m(w) between them; returns the last continuous w.
    The solver is reset once, at the start: the implicit solver's warm-start v carries across segments.
    Segment s's lower-level batches continue where the previous segment's stopped."""
    cfg, m = run.config, run.budget_size
    constraint = CappedSimplex(m)
    segment = cfg.binarize_every or cfg.upper_steps
    per_step = cfg.inner_steps + 1
    w, done, batches = recorder.w, 0, run.batches
    while done < cfg.upper_steps:
        steps = min(segment, cfg.upper_steps - done)
        off = done * per_step
        result = bilevel.minimize(
            run.problem,
            run.solver,
            {"w": w},
            optim.SGD(lr=cfg.upper_lr),
            steps,
            constraint=constraint,
            callback=recorder.callback(done),
            inner_init=run.theta0,
            inner_data=None if batches is None else (lambda t, o=off: batches(o + t)),
            warm_start_inner=False,
            reset_solver=done == 0,
            graph=cfg.graph,
        )
        w = result.outer["w"]
        done += steps
        if cfg.binarize_every is not None and done < cfg.upper_steps:
            w = top_k(w, m)  # periodic hard binarisation: w ← top-m(w)
            recorder.binarized(w)
    return w


# --------------------------------------------------------------------------- search: exact, class-wise
def _exhaustive(run: _Run, progress: Any, started: float) -> SearchResult:
    """The exact class-wise worst case: F(v) at the indicator v of every set of m classes present in the
    pool (one lower-level run each, from θ_o, as every upper step of the relaxed search runs it), and the set
    of lowest F (ties: the first in sorted order). ``per_class`` holds every value; ``objective`` F at the
    random start set (``initial``) and at the chosen set (``final`` = ``last``)."""
    import itertools

    present = sorted(set(run.pool.y.cpu().tolist()))
    sets = list(itertools.combinations(present, run.budget_size))
    if len(sets) > MAX_EXHAUSTIVE:
        raise ValueError(
            f"exhaustive: {len(sets)} sets of {run.budget_size} classes exceed {MAX_EXHAUSTIVE} lower-level "
            "runs: lower the budget or use the relaxed search (exhaustive=False)"
        )
    update, close = _progress_fn(progress, len(sets), f"exact class-wise worst case ({run.method.name})")
    per_class: dict[str, float] = {}
    try:
        with seeded(run.config.seed, run.device):
            for done, classes in enumerate(sets, 1):
                v = torch.zeros(run.size, dtype=torch.float64, device=run.device)
                v[list(classes)] = 1.0
                per_class[",".join(map(str, classes))] = _objective_at(
                    run.problem, run.solver, run.theta0, v, run.batches
                )
                update(done)
    finally:
        close()
    best = min(per_class, key=per_class.__getitem__)
    final = torch.zeros(run.size, dtype=torch.float64, device=run.device)
    final[[int(c) for c in best.split(",")]] = 1.0
    start = ",".join(str(int(c)) for c in run.start_classes.tolist())
    objective = {"initial": per_class[start], "final": per_class[best], "last": per_class[best]}
    result = _result(run, [], [], final, final, objective, time.perf_counter() - started)
    result.config["final_rule"] = "exhaustive"
    result.per_class = per_class
    return result


# ------------------------------------------------------------------------------ search: finalisation
def _final_set(run: _Run, w: Tensor, recorder: _Recorder) -> tuple[Tensor, dict[str, float]]:
    """The final binary w and ``objective`` {initial, final, last}: top-m(w) and F there (``last``); with
    ``keep_best``, the binary point of lowest F among it, the start and every binarisation (``final``)."""
    final = top_k(w, run.budget_size)
    objective_final = _objective_at(run.problem, run.solver, run.theta0, final, run.batches)
    objective_last = objective_final
    history = recorder.history
    if run.config.keep_best:  # the best binary set met: the start, each binarisation, the end
        candidates = [(objective_final, final)]
        candidates += [(history[i]["objective"], wb) for i, wb in recorder.binary_points if i < len(history)]
        best_value, best = min(candidates, key=lambda c: c[0])
        if best_value < objective_final:
            final, objective_final = best, best_value
    objective = {"initial": history[0]["objective"], "final": objective_final, "last": objective_last}
    return final, objective


def _result(
    run: _Run,
    history: list[dict[str, Any]],
    tops: list[Tensor],
    w: Tensor,
    final: Tensor,
    objective: dict[str, float],
    seconds: float,
) -> SearchResult:
    """The `SearchResult`: the chosen set (class-wise: every example of the chosen classes), each history
    entry's ``overlap_final`` |top-m(w_k) ∩ final| / m, and the ``config`` record."""
    cfg, m = run.config, run.budget_size
    final_set = final.bool().nonzero().squeeze(1)
    final_cpu = torch.zeros(run.size, dtype=torch.bool)
    final_cpu[final_set.cpu()] = True
    for entry, top in zip(history, tops):
        entry["overlap_final"] = float(final_cpu[top.cpu()].sum()) / m
    if cfg.classwise:
        chosen_classes = final_set.cpu().sort().values
        indices = torch.isin(run.pool.y.cpu(), chosen_classes).nonzero().squeeze(1)
    else:
        chosen_classes = None
        indices = final_set.cpu().sort().values
    about = run.about
    return SearchResult(
        indices=indices,
        weights=w.detach().cpu(),
        history=history,
        config=_record(run),
        initial_indices=run.start.cpu().sort().values,
        objective=objective,
        classes=chosen_classes,
        seconds=seconds,
        fingerprint=data_fingerprint(
            run.pool, dataset=about.get("dataset"), split_seed=about.get("split_seed")
        ),
    )


def _record(run: _Run) -> dict[str, Any]:
    """The result's ``config``: the target's dataset/model/split seed, the method and its hyper-parameters,
    then `SearchConfig.record` (``asdict``) with the derived m (``size``), ``unit``, ``pool_size``,
    ``solver`` and ``device`` in their places."""
    fields = run.config.record()
    budget = fields.pop("budget")
    return {
        **{k: v for k, v in run.about.items() if v is not None},
        "method": run.method.name,
        "hparams": jsonable(run.method.hparams()),
        "budget": budget if isinstance(budget, (int, float)) else float(budget),
        "size": run.budget_size,
        "unit": "classes" if run.config.classwise else "examples",
        "pool_size": len(run.pool),
        "hypergrad": fields.pop("hypergrad"),
        "solver": repr(run.solver),
        **fields,
        "device": str(run.device),
    }


def _objective_at(
    problem: bilevel.BilevelProblem, solver: bilevel.Solver, theta0: dict, w: Tensor, batches: Any
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
