"""The unlearning-method protocol, hyper-parameter validation, and the weighted lower-level objective.

Every method is a dataclass whose fields are its hyper-parameters (with defaults, validated scikit-learn
style)
and offers two things:

``unlearn(model, task) -> Unlearned``
    Runs the method on a deep copy of ``model`` (the input is never mutated) and returns the new model, the
    wall-clock run time in seconds (RTE) and an ``info`` dict.

``bind(model, task)`` then ``lower_loss(params, buffers, batch, weights) -> Tensor``
    The same method's objective with per-sample forget weights, the inner problem of the worst-case search.
    ``bind`` returns a copy of the method attached to what the objective needs (the module to evaluate with
    ``torch.func.functional_call``, θ_o, frozen copies, seeded random labels, a saliency mask, ...).

    ``batch = (x, y, index)``: a mini-batch of the **training pool** as yielded by ``task.pool.batches(...)``;
    ``index`` holds the rows' positions in the pool. ``weights`` is a vector of length N = ``len(task.pool)``:
    ``weights[i] ∈ [0, 1]`` is pool example i's forget weight and ``1 − weights[i]`` its retain weight. With
    per-sample loss values v_i the two weighted means every method builds on are

        mean_f^w(v) = (N/|B|) · Σ_{i∈B} w_i v_i / Σ_{j≤N} w_j
        mean_r^w(v) = (N/|B|) · Σ_{i∈B} (1 − w_i) v_i / Σ_{j≤N} (1 − w_j)

    For a full batch (B = the pool) they are exactly the weighted means, and at the 0/1 indicator of D_f they
    equal the plain means over D_f and D_r, i.e. the unweighted objective; a uniformly drawn mini-batch gives
    an unbiased estimate of them. On the capped simplex (Σw = m) the normalisers are constants. Both are
    differentiable in the parameters and in ``weights``.

    ``initial_state()`` of a bound method returns the (params, buffers) the lower level starts from: θ_o, or a
    fresh initialisation for Retrain, or the expanded model for BE. The bound module is put in eval mode
    (BatchNorm uses its running statistics, which ``buffers`` carries and nothing updates); the worst-case
    search then switches its BatchNorm layers to batch statistics
    (`unlearning.worst_case.set_batchnorm_policy`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel.tree import Params
from bilevel.validate import Interval, Options
from unlearning.data_types import Task
from unlearning.loop import StepHook

Batch = tuple[Tensor, Tensor, Tensor]


class NoLowerLevelError(TypeError):
    """The method has no lower-level objective (``lower_loss``): it is not the minimiser of a loss."""


@dataclass
class Unlearned:
    """The result of ``Method.unlearn``: the unlearned model, its run time in seconds, and diagnostics."""

    model: nn.Module
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- validation
# A hyper-parameter's valid range is a `bilevel.validate.Interval` or `Options` (the project's one set of
# validators), or `Milestones`.
@dataclass(frozen=True)
class Milestones:
    """A tuple of non-negative epoch numbers."""

    def check(self, value: Any) -> bool:
        return isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        )

    def describe(self) -> str:
        return "a tuple of non-negative ints"


def hparam(default: Any, valid: Interval | Options | Milestones, doc: str) -> Any:
    """A hyper-parameter field: its default, its valid range and a one-line description (the CLI lists
    them)."""
    return field(default=default, metadata={"valid": valid, "doc": doc})


def epochs_hp(default: int) -> Any:
    return hparam(default, Interval(int, 0, None), "number of epochs")


def lr_hp(default: float) -> Any:
    return hparam(default, Interval(float, 0, None, closed="neither"), "learning rate (SGD)")


# -------------------------------------------------------------------------------------------- the protocol
@dataclass
class Run:
    """What a wrapper hands the method it wraps: loop hooks (e.g. a saliency mask) and the mask itself."""

    hooks: Sequence[StepHook] = ()
    mask: Params | None = None


@dataclass
class LowerContext:
    """What a bound method's ``lower_loss`` needs; built once by ``bind``."""

    module: nn.Module
    params: Params
    buffers: Params
    num_classes: int
    pool_size: int
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of the unlearning methods (subclasses are dataclasses of their hyper-parameters)."""

    name: ClassVar[str] = ""
    #: None if a saliency mask can be applied to the method's updates, else the reason it cannot.
    mask_unsupported: ClassVar[str | None] = None
    _lower: LowerContext | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- hyper-parameters
    @classmethod
    def hyperparameters(cls) -> dict[str, dict[str, Any]]:
        """``{name: {"default", "valid", "doc"}}`` for every hyper-parameter (in declaration order)."""
        out = {}
        for f in dataclasses.fields(cls):
            if "valid" in f.metadata:
                out[f.name] = {
                    "default": f.default,
                    "valid": f.metadata["valid"].describe(),
                    "doc": f.metadata["doc"],
                }
        return out

    def hparams(self) -> dict[str, Any]:
        """The current hyper-parameter values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if "valid" in f.metadata}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid hyper-parameter and its valid range."""
        for f in dataclasses.fields(self):
            valid = f.metadata.get("valid")
            value = getattr(self, f.name)
            if valid is not None and not valid.check(value):
                raise ValueError(
                    f"{self.name}: hyper-parameter {f.name} must be {valid.describe()}, got {value!r}"
                )

    # ------------------------------------------------------------------------------------- unlearn
    def unlearn(self, model: nn.Module, task: Task) -> Unlearned:
        """Unlearn ``task.forget`` from a deep copy of ``model``; ``seconds`` is the wall-clock time of the
        run."""
        self.validate()
        check_model_task(model, task)
        work = copy.deepcopy(model)
        start = time.perf_counter()
        out, info = self._unlearn(work, task, Run())
        seconds = time.perf_counter() - start
        return Unlearned(out, seconds, {"method": self.name, "hparams": self.hparams(), **info})

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict[str, Any]]:
        """Modify ``model`` (already a private copy) in place or build a new one; return it and
        diagnostics."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- lower level
    def bind(self, model: nn.Module, task: Task) -> Method:
        """A copy of this method whose ``lower_loss`` and ``initial_state`` work on ``model`` and ``task``."""
        self.validate()
        check_model_task(model, task)
        bound = copy.copy(self)
        bound._lower = self._bind(model, task)
        return bound

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        return default_context(model, task)

    @property
    def module(self) -> nn.Module:
        """The module ``lower_loss`` evaluates with ``functional_call`` (bound methods only)."""
        return self._context().module

    def initial_state(self) -> tuple[Params, Params]:
        """Detached copies of the (params, buffers) the lower level starts from."""
        ctx = self._context()
        return clone(ctx.params), clone(ctx.buffers)

    def lower_loss(self, params: Params, buffers: Params, batch: Batch, weights: Tensor) -> Tensor:
        """The method's objective on ``batch`` with per-sample forget weights (see the module docstring)."""
        ctx = self._context()
        x, y, index = batch
        if weights.dim() != 1 or weights.numel() != ctx.pool_size:
            raise ValueError(
                f"weights must be a vector of length len(task.pool) = {ctx.pool_size}, "
                f"got shape {tuple(weights.shape)}"
            )
        return self._lower_loss(ctx, params, buffers, x, y, index.to(weights.device), weights)

    def _lower_loss(
        self,
        ctx: LowerContext,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        weights: Tensor,
    ) -> Tensor:
        raise NotImplementedError

    def _context(self) -> LowerContext:
        if self._lower is None:
            raise RuntimeError(
                f"{self.name}: call method.bind(model, task) first; lower_loss needs the model and task"
            )
        return self._lower


# ------------------------------------------------------------------------------------------------ helpers
def check_model_task(model: nn.Module, task: Task) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must be an unlearning.data_types.Task, got {type(task).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError("model has no parameters to unlearn")


def clone(tree: Params) -> Params:
    return {k: v.detach().clone() for k, v in tree.items()}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_context(model: nn.Module, task: Task, module: nn.Module | None = None) -> LowerContext:
    """Context with a private eval-mode copy of ``model`` (or ``module``) and its current weights; the copy's
    own parameters do not require grad (they are constants wherever ``params`` leaves them out)."""
    module = copy.deepcopy(model if module is None else module).eval().requires_grad_(False)
    return LowerContext(
        module=module,
        params=clone(dict(module.named_parameters())),
        buffers=clone(dict(module.named_buffers())),
        num_classes=task.num_classes,
        pool_size=len(task.pool),
    )


def forward(ctx: LowerContext, params: Params, buffers: Params, x: Tensor) -> Tensor:
    """``functional_call(module, (params, buffers), x)``; params missing from ``params`` come from the
    module."""
    return torch.func.functional_call(ctx.module, (params, buffers), (x,), strict=False)


def forget_mean(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """mean_f^w(v) = (N/|B|) Σ_{i∈B} w_i v_i / Σ_j w_j."""
    n = weights.numel()
    w = weights[index].to(values.dtype)
    return (n / values.shape[0]) * (w * values).sum() / weights.sum().clamp_min(1e-12).to(values.dtype)


def retain_mean(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """mean_r^w(v) = (N/|B|) Σ_{i∈B} (1 − w_i) v_i / Σ_j (1 − w_j)."""
    n = weights.numel()
    w = (1 - weights[index]).to(values.dtype)
    total = (1 - weights).sum().clamp_min(1e-12).to(values.dtype)
    return (n / values.shape[0]) * (w * values).sum() / total
