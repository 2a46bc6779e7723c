"""The solver base class `Solver`, what every solver returns (`Hypergrad`), and the checks they share.

For min_λ F(λ) = f(θ*(λ), λ) with θ*(λ) = argmin_θ g(θ, λ), a solver computes ∇F(λ) = d f(θ*(λ), λ) / dλ.
`Solver.hypergrad` does once what every solver needs — argument checks, the two data streams, the timing,
the finiteness checks, the inner diagnostics and the `Hypergrad` record — and calls the subclass's own
``_step(call) -> Step`` for the mathematics. A custom solver subclasses `Solver`, sets ``optimizer`` and
``steps`` and implements ``_step``; `bilevel.minimize`, `bilevel.check_hypergrad` and `bilevel.profile`
then accept it like the built-in ones.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from . import tree
from .inner import inner_diagnostics, run_inner
from .problem import BilevelProblem, Data, DataStream, check_scalar
from .tree import Params, as_params, check_finite
from .validate import positive_int  # noqa: F401  (re-exported for bilevel.profile until it imports bilevel.validate)

__all__ = ["Call", "Hypergrad", "Solver", "Step", "as_solver", "check_scalar", "validate_call"]


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
    """Shared argument checks of ``Solver.hypergrad``."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem(inner_loss, outer_loss), got {type(problem).__name__}"
        )
    as_params(inner_init, "inner_init")
    as_params(outer, "outer")
    for k, v in inner_init.items():
        if not v.is_floating_point():
            raise TypeError(f"inner_init[{k!r}] must be a floating-point tensor, got {v.dtype}")
    for k, v in outer.items():
        if not v.is_floating_point():
            raise TypeError(f"outer[{k!r}] must be a floating-point tensor, got {v.dtype}")


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
        call = Call(
            problem,
            inner_init,
            outer,
            DataStream(inner_data, "inner_data"),
            DataStream(outer_data, "outer_data"),
        )
        step = self._step(call)
        for value, where in step.checks:
            check_finite(value, where)
        inner = tree.detach(step.inner)
        seconds = time.perf_counter() - start
        diagnostics = step.diagnostics
        if diagnostics is None:
            diagnostics = inner_diagnostics(problem, inner, step.outer, step.batch)
        info = {"seconds": seconds, "outer_loss": float(step.outer_loss), **diagnostics, **step.info}
        return Hypergrad(grad=tree.detach(step.grad), inner=inner, info=info)

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
                call.problem, self.optimizer, theta, lam, call.inner_data, start=0, stop=self.steps
            )
        check_finite(theta, f"the inner solution after {self.steps} steps")
        return theta, lam


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
