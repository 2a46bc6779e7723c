"""The solver base class `Solver`, what every solver returns (`Hypergrad`), and the checks they share.

For min_λ F(λ) = f(θ*(λ), λ) with θ*(λ) = argmin_θ g(θ, λ), a solver computes ∇F(λ) = d f(θ*(λ), λ) / dλ.
`Solver.hypergrad` does once what every solver needs — argument checks, the two data streams, the timing,
the finiteness checks, the inner diagnostics and the `Hypergrad` record — and calls the subclass's own
``_step(call) -> Step`` for the mathematics. ``call.monitor`` holds the call's finiteness and growth checks
(`bilevel.monitor`); with ``call.capturable`` (the path `bilevel.graphed` runs) a step performs no host
synchronisation: checks stay device-side flags and diagnostics stay tensors. A custom solver subclasses
`Solver`, sets ``optimizer`` and ``steps`` and implements ``_step``; `bilevel.minimize`,
`bilevel.check_hypergrad` and `bilevel.profile` then accept it like the built-in ones.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import tree
from .inner import inner_diagnostics, run_inner
from .modules import solver_call
from .monitor import MAX_GROWTH, Monitor, capturing, check_divergence_options
from .problem import BilevelProblem, Data, DataStream, check_scalar
from .tree import Params, as_params
from .validate import positive_int  # noqa: F401  (re-exported for bilevel.profile until it imports bilevel.validate)

__all__ = [
    "Call",
    "Hypergrad",
    "Solver",
    "Step",
    "as_solver",
    "check_optimizer",
    "check_scalar",
    "validate_call",
]


@dataclass(frozen=True)
class Hypergrad:
    """A hypergradient ∇F(λ) = d f(θ*(λ), λ) / dλ and how it was obtained.

    ``grad``: dict shaped like ``outer``. ``inner``: the inner solution θ the hypergradient was evaluated at
    (detached). ``info``: diagnostics; every solver reports ``seconds`` (the hypergradient's wall time, the
    diagnostic inner gradient aside), ``outer_loss`` (f at the returned inner solution), ``inner_loss`` and
    ``inner_grad_norm`` (g and ‖∇_θ g‖ there) and ``hvp_count``; implicit solvers add the linear-solve
    ``residual`` (relative) and ``iterations``.
    """

    grad: Params
    inner: Params
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """f(θ, λ) at the returned inner solution."""
        return float(self.info["outer_loss"])


def validate_call(problem: BilevelProblem, inner_init: Params, outer: Params) -> None:
    """Shared argument checks of ``Solver.hypergrad``: a `BilevelProblem` and two non-empty dicts of floating
    tensors. (Mixed dtypes or devices are allowed, e.g. float64 sample weights on a float32 model; a loss
    that fails on them is reported by `mixed_inputs_error`.)"""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem(inner_loss, outer_loss), got {type(problem).__name__}"
        )
    as_params(inner_init, "inner_init")
    as_params(outer, "outer")
    for name, params in (("inner_init", inner_init), ("outer", outer)):
        for k, v in params.items():
            if not v.is_floating_point():
                raise TypeError(f"{name}[{k!r}] must be a floating-point tensor, got {v.dtype}")


def check_inputs_finite(monitor: Monitor, inner_init: Params, outer: Params) -> None:
    """NaN/Inf in the caller's ``outer`` or ``inner_init`` is reported as such (not as a failure of the inner
    iterate it would otherwise become)."""
    monitor.finite(outer, "outer (the outer variable passed in)")
    monitor.finite(inner_init, "inner_init (the inner starting point passed in)")


def mixed_inputs_error(exc: RuntimeError, inner_init: Params, outer: Params) -> TypeError | None:
    """A clear error for a loss that failed on inputs of mixed dtypes or devices, else None."""
    text = str(exc)
    entries = [
        (f"{name}[{k!r}]", v)
        for name, d in (("inner_init", inner_init), ("outer", outer))
        for k, v in d.items()
    ]
    for attr, words in (("dtype", ("dtype", "scalar type")), ("device", ("device",))):
        kinds = {getattr(v, attr) for _, v in entries}
        if len(kinds) > 1 and any(w in text for w in words):
            first = entries[0]
            other = next(e for e in entries if getattr(e[1], attr) != getattr(first[1], attr))
            fix = "{k: v.double() for k, v in outer.items()}" if attr == "dtype" else "{k: v.to(device) ...}"
            cause = text.splitlines()[0] if text else "RuntimeError"
            return TypeError(
                f"a loss failed on inputs of mixed {attr}s: {first[0]} is {getattr(first[1], attr)} but "
                f"{other[0]} is {getattr(other[1], attr)} ({cause}); "
                f"convert inner_init and outer to one {attr}, e.g. {fix}, or convert inside the losses"
            )
    return None


def missing_key_error(exc: KeyError, inner_init: Params, outer: Params) -> KeyError | None:
    """A clear ``KeyError`` for a loss that read a key ``inner_init`` or ``outer`` lacks, else None."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return None
    key = exc.args[0]
    if key in inner_init and key in outer:
        return None
    if key in inner_init:
        where = f"outer has no {key!r} (it has {sorted(outer)}; inner_init has it)"
    elif key in outer:
        where = f"inner_init has no {key!r} (it has {sorted(inner_init)}; outer has it)"
    else:
        where = f"neither inner_init (keys {sorted(inner_init)}) nor outer (keys {sorted(outer)}) has it"
    return KeyError(
        f"a loss read the key {key!r}, but {where}: the keys of inner_init and outer must be the ones the "
        "inner and outer losses read (or the batch lacks it)"
    )


def check_optimizer(optimizer: Any, name: str = "optimizer", *, factory: bool = False) -> Any:
    """``optimizer`` if it is a `bilevel.optim` optimizer (or, with ``factory``, a callable outer ->
    optimizer), else a ``TypeError`` that names the fix; a ``torch.optim`` optimizer is refused by name."""
    is_class = isinstance(optimizer, type)
    torch_opt = (is_class and issubclass(optimizer, torch.optim.Optimizer)) or isinstance(
        optimizer, torch.optim.Optimizer
    )
    if torch_opt:
        cls = optimizer if is_class else type(optimizer)
        ours = cls.__name__ if cls.__name__ in ("SGD", "Adam", "AdamW") else "SGD"
        raise TypeError(
            f"{name} is torch.optim.{cls.__name__}, a stateful torch optimizer; the solvers need a "
            f"functional, differentiable one: bilevel.optim.{ours}(lr=0.1)"
        )
    if is_class:
        raise TypeError(
            f"{name} is the class {optimizer.__name__}, not an optimizer: pass an instance, e.g. "
            f"{optimizer.__name__}(lr=0.1)"
        )
    if is_optimizer(optimizer) or (factory and callable(optimizer)):
        return optimizer
    extra = (
        ", or a factory outer -> optimizer, e.g. lambda outer: optim.SGD(lr=outer['lr'])" if factory else ""
    )
    raise TypeError(
        f"{name} must be a bilevel.optim optimizer (with init and step), e.g. optim.SGD(lr=0.1){extra}; "
        f"got {type(optimizer).__name__}"
    )


@dataclass(frozen=True)
class Call:
    """One ``hypergrad`` call as a solver's ``_step`` sees it: the validated arguments and the data streams.

    ``inner_data(t)`` is the inner batch of step t, ``outer_data(0)`` the outer batch; each solver draws them
    in its own order (a callable that draws random numbers meets the same RNG state every time).
    """

    problem: BilevelProblem
    inner_init: Params
    outer: Params
    inner_data: DataStream
    outer_data: DataStream
    monitor: Monitor = field(default_factory=Monitor)
    capturable: bool = False
    outer_aliases: dict[int, str] = field(default_factory=dict)  # id of a tensor standing for outer[key]


@dataclass(frozen=True)
class Step:
    """What a solver's ``_step`` hands back to `Solver.hypergrad`.

    ``grad``: ∇F(λ) (detached by `hypergrad`); ``inner``: θ it was evaluated at; ``outer_loss``: f(θ, λ);
    ``outer``: λ as the step used it and ``batch``: the inner batch at which `hypergrad` evaluates the
    diagnostics g(θ, λ) and ‖∇_θ g(θ, λ)‖ (one more inner gradient), unless ``diagnostics`` already holds
    ``inner_loss`` and ``inner_grad_norm``; ``checks``: ``(value, where)`` pairs that must be finite, checked
    in order (a failure raises ``FloatingPointError`` naming ``where``); ``info``: the solver's own
    diagnostics, after the shared ones in ``Hypergrad.info``.
    """

    grad: Params
    inner: Params
    outer_loss: Tensor
    outer: Params
    batch: Any = None
    checks: tuple[tuple[Any, str], ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, float] | None = None


class Solver(abc.ABC):
    """A hypergradient solver: ``hypergrad(problem, inner_init, outer, inner_data, outer_data) -> Hypergrad``.

    Subclasses set ``optimizer`` (the inner `bilevel.optim` optimizer, or None where none is needed) and
    ``steps`` (inner steps per call) and implement ``_step``; they may override ``batches_per_call`` (inner
    batches one call consumes; ``steps + 1`` here), ``reset`` (forget warm-start state carried from call to
    call; nothing here) and ``_check_call`` (their own argument checks).
    """

    optimizer: Any
    steps: int
    # What a runaway (finite but diverging) inner run does: "raise" a FloatingPointError or "warn"; the
    # growth limit is ‖θ_t‖ ≤ max_growth · max(1, ‖θ_0‖) (see bilevel.monitor).
    on_divergence: str = "raise"
    max_growth: float = MAX_GROWTH
    # Whether the hypergradient's objective depends on inner_init (the T-step objective of Unrolled and
    # Forward does; the argmin approximated by Implicit and FirstOrder does not). minimize warm-starts the
    # inner problem from the previous solution by default only when it does not.
    objective_depends_on_init: bool = True

    def _set_divergence(self, on_divergence: Any, max_growth: Any) -> None:
        """Validate and store the solver's ``on_divergence`` and ``max_growth``."""
        self.on_divergence, self.max_growth = check_divergence_options(on_divergence, max_growth)

    @property
    def batches_per_call(self) -> int:
        """Inner batches one `hypergrad` call consumes (steps 0 .. ``steps`` of ``inner_data``)."""
        return self.steps + 1

    def reset(self) -> None:  # noqa: B027 (an optional hook: most solvers keep no state)
        """Forget any state carried from one call to the next (a warm start); this base keeps none."""

    def hypergrad(
        self,
        problem: BilevelProblem,
        inner_init: Params,
        outer: Params,
        inner_data: Data = None,
        outer_data: Data = None,
    ) -> Hypergrad:
        """∇F(λ) at ``outer`` = λ, the inner problem started at ``inner_init``. ``inner_data`` and
        ``outer_data``: None, an iterable of batches or a callable step -> batch (see `DataStream`)."""
        start = time.perf_counter()
        validate_call(problem, inner_init, outer)
        self._check_call(inner_init, outer)
        monitor = Monitor(on_divergence=self.on_divergence, max_growth=self.max_growth)
        check_inputs_finite(monitor, inner_init, outer)
        call = Call(
            problem,
            inner_init,
            outer,
            DataStream(inner_data, "inner_data"),
            DataStream(outer_data, "outer_data"),
            monitor,
        )
        try:
            with solver_call():
                step = self._step(call)
            inner = self._check_result(call, step)
            seconds = time.perf_counter() - start
            diagnostics = self._diagnostics(call, step, inner)
        except (KeyError, RuntimeError) as exc:
            clear = _clear_error(exc, inner_init, outer)
            if clear is None:
                raise
            raise clear from exc
        info = {"seconds": seconds, "outer_loss": _number(step.outer_loss), **diagnostics, **step.info}
        return Hypergrad(grad=tree.detach(step.grad), inner=inner, info=info)

    def capture_problem(self) -> str | None:
        """Why this solver has no capturable path (`hypergrad_capturable`, `bilevel.graphed`), or None.
        A custom solver's ``_step`` may read values on the host, so this base says it has none."""
        return (
            f"{type(self).__name__} has no capturable path (Unrolled, Implicit with CG or Neumann, "
            "FirstOrder and bilevel.batched of those have one)"
        )

    def hypergrad_capturable(
        self,
        problem: BilevelProblem,
        inner_init: Params,
        outer: Params,
        inner_data: Data = None,
        outer_data: Data = None,
        *,
        outer_aliases: dict[int, str] | None = None,
    ) -> tuple[Hypergrad, Monitor]:
        """`hypergrad` without host synchronisation, the body `bilevel.graphed` captures: the same
        mathematics, but every check is a device-side flag of the returned `Monitor` (call its
        ``raise_if_failed()`` after the call) and ``info`` holds tensors and no ``seconds``. Implicit solvers
        run exactly ``max_iter`` linear-solver iterations. ``outer_aliases``: ids of tensors that stand for
        ``outer[key]`` in the optimizer's hyper-parameters (the caller's tensors, where `graphed` passes its
        static copies as ``outer``)."""
        reason = self.capture_problem()
        if reason is not None:
            raise ValueError(f"no capturable path: {reason}")
        validate_call(problem, inner_init, outer)
        self._check_call(inner_init, outer)
        monitor = Monitor(deferred=True, on_divergence=self.on_divergence, max_growth=self.max_growth)
        streams = DataStream(inner_data, "inner_data"), DataStream(outer_data, "outer_data")
        call = Call(problem, inner_init, outer, *streams, monitor, True, dict(outer_aliases or {}))
        try:
            with capturing(), solver_call():
                check_inputs_finite(monitor, inner_init, outer)
                step = self._step(call)
                inner = self._check_result(call, step)
                diagnostics = self._diagnostics(call, step, inner)
        except (KeyError, RuntimeError) as exc:
            clear = _clear_error(exc, inner_init, outer)
            if clear is None:
                raise
            raise clear from exc
        info = {"outer_loss": step.outer_loss.detach(), **diagnostics, **step.info}
        return Hypergrad(grad=tree.detach(step.grad), inner=inner, info=info), monitor

    def _check_result(self, call: Call, step: Step) -> Params:
        """The shared checks of a step's result, its ``checks`` (finite) and then the growth of θ from
        ``inner_init`` (see `bilevel.monitor`); returns θ detached."""
        monitor = call.monitor
        for value, where in step.checks:
            monitor.finite(value, where)
        inner = tree.detach(step.inner)
        start_norm = tree.norm(tree.detach(call.inner_init))
        monitor.bounded(inner, start_norm, f"the inner solution after {self.steps} steps")
        return inner

    @staticmethod
    def _diagnostics(call: Call, step: Step, inner: Params) -> dict[str, Any]:
        """{inner_loss, inner_grad_norm} at θ: the step's own, or one more inner gradient (tensors when the
        call is capturable, floats otherwise)."""
        if step.diagnostics is not None:
            return step.diagnostics
        return inner_diagnostics(call.problem, inner, step.outer, step.batch, as_tensors=call.capturable)

    def _check_call(self, inner_init: Params, outer: Params) -> None:  # noqa: B027 (an optional hook)
        """The solver's own argument checks, after the shared `validate_call`; none here."""

    @abc.abstractmethod
    def _step(self, call: Call) -> Step:
        """The solver's own computation of ∇F(λ) for one validated call."""

    def _inner_solution(self, call: Call) -> tuple[Params, Params]:
        """(θ, λ): ``steps`` detached steps of ``optimizer`` on g(·, λ) from ``inner_init`` (batches 0 ..
        steps−1), checked finite, and λ detached; no graph is kept."""
        lam = tree.detach(call.outer)
        theta = tree.detach(call.inner_init)
        if self.steps:
            theta, _ = run_inner(
                call.problem,
                self.optimizer,
                theta,
                lam,
                call.inner_data,
                start=0,
                stop=self.steps,
                monitor=call.monitor,
            )
        call.monitor.finite(theta, f"the inner solution after {self.steps} steps")
        return theta, lam


def _number(value: Tensor) -> Any:
    """A 0-dim tensor as a float (the eager info), a per-task vector (`bilevel.batched`) as a tensor."""
    return float(value) if value.numel() == 1 else value.detach()


def _clear_error(exc: Exception, inner_init: Params, outer: Params) -> Exception | None:
    """A clear error where a loss failed on the caller's inputs (a missing key, mixed dtypes), else None."""
    if isinstance(exc, KeyError):
        return missing_key_error(exc, inner_init, outer)
    return mixed_inputs_error(exc, inner_init, outer)  # type: ignore[arg-type]


def is_optimizer(value: Any) -> bool:
    """Whether ``value`` is a `bilevel.optim` optimizer (it has ``init`` and ``step``)."""
    return hasattr(value, "init") and hasattr(value, "step")


def as_solver(solver: Any, name: str = "solver") -> Solver:
    """``solver`` if it is a `Solver`, else a ``TypeError`` naming the argument and what to pass."""
    if not isinstance(solver, Solver):
        raise TypeError(
            f"{name} must be a hypergradient solver (a bilevel.Solver): Unrolled(...), Implicit(...), "
            f"FirstOrder(...), Forward(...) or a subclass of bilevel.Solver; got {type(solver).__name__}"
        )
    return solver
