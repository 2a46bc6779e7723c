"""First-order hypergradients: no Hessian solve.

- ``"partial"``: ∇F ≈ ∂_λ f(θ_T, λ). Exact when f's dependence through θ* is nil or ignored on purpose; it is
  what the worst-case forget-set paper's code computes (a signSGD lower level has zero derivative a.e.).
- ``"identity"`` (DARTS, T1–T2): H⁻¹ ≈ c·I, so ∇F ≈ ∂_λ f − c · ∇²_λθ g · ∂_θ f. The mixed product is the
  central difference [∇_λ g(θ + εv) − ∇_λ g(θ − εv)] / 2ε with v = ∂_θ f and ε = eps/‖v‖ (DARTS), or exact
  with ``finite_difference=False``. c is the inner optimizer's learning rate ξ in DARTS's derivation.
- ``"f2sa"``: the penalty method F2SA (Kwon et al. 2023), gradients only. With z ≈ argmin_θ g and
  y ≈ argmin_θ g + f/σ,  ∇F ≈ ∂_λ f(y, λ) + σ(∂_λ g(y, λ) − ∂_λ g(z, λ)),  an O(1/σ)-accurate estimate.
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree
from .hypergrad import Call, Solver, Step, check_optimizer
from .inner import run_inner
from .linearize import linearize, outer_partials
from .monitor import MAX_GROWTH, Monitor
from .problem import BilevelProblem, DataStream, check_scalar
from .tree import Params
from .validate import number, positive_int

MODES = ("partial", "identity", "f2sa")


def _lambda_grad_of_inner(problem: BilevelProblem, theta: Params, lam: Params, batch: Any) -> Params:
    """∂_λ g(θ, λ)."""
    lam_l = {k: v.detach().requires_grad_(True) for k, v in lam.items()}
    with torch.enable_grad():
        value = check_scalar(problem.inner_loss(tree.detach(theta), lam_l, batch), "inner_loss")
        got = torch.autograd.grad(value, list(lam_l.values()), allow_unused=True)
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(lam_l.items(), got)}


class _ScaledOuter:
    """g + f/σ as an inner objective (F2SA's y-problem)."""

    def __init__(self, problem: BilevelProblem, sigma: float, outer_batch: Any) -> None:
        self.problem, self.sigma, self.outer_batch = problem, sigma, outer_batch

    def inner_loss(self, inner: Params, outer: Params, batch: Any):
        g = self.problem.inner_loss(inner, outer, batch)
        return g + self.problem.outer_loss(inner, outer, self.outer_batch) / self.sigma


class FirstOrder(Solver):
    """First-order hypergradients (see module docstring for the three modes).

    Parameters
    ----------
    optimizer, steps: the inner solver (``steps=0``: ``inner_init`` is the solution). The optimizer comes
        first: ``FirstOrder(optim.SGD(lr=0.1), 20, mode="f2sa", sigma=100.0)``, or ``FirstOrder(mode=
        "partial")`` without inner steps; a mode string in the optimizer's place is refused.
    mode: ``"partial"`` | ``"identity"`` | ``"f2sa"``.
    c: the H⁻¹ ≈ c·I scale of ``"identity"``.
    eps, finite_difference: the DARTS finite-difference radius (ε = eps/‖∂_θ f‖), or an exact mixed product.
    sigma, penalty_steps: F2SA's penalty σ and the number of inner steps on g + f/σ (warm-started at z;
        default ``steps``).
    on_divergence, max_growth: runaway growth of the inner iterate (see `Unrolled`, `bilevel.monitor`).
    """

    objective_depends_on_init = False  # it approximates the hypergradient at θ*(λ)

    def __init__(
        self,
        optimizer: Any = None,
        steps: int = 0,
        mode: str = "partial",
        *,
        c: float = 1.0,
        eps: float = 0.01,
        finite_difference: bool = True,
        sigma: float = 100.0,
        penalty_steps: int | None = None,
        on_divergence: str = "raise",
        max_growth: float = MAX_GROWTH,
    ) -> None:
        if isinstance(optimizer, str):
            raise TypeError(
                f"FirstOrder's first argument is the inner optimizer, got the string {optimizer!r}: pass the "
                f"mode by keyword, FirstOrder(mode={optimizer!r}) or FirstOrder(optim.SGD(lr=0.1), steps, "
                f"mode={optimizer!r}, ...)"
            )
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.steps = positive_int(steps, "steps", allow_zero=True)
        if optimizer is not None:
            check_optimizer(optimizer)
        elif steps > 0 or mode == "f2sa":
            raise TypeError(
                "optimizer must be a bilevel.optim optimizer (e.g. optim.SGD(lr=0.1)) "
                "when steps > 0 or mode='f2sa'"
            )
        self._set_divergence(on_divergence, max_growth)
        self.c, self.eps = float(number(c, "c")), float(number(eps, "eps"))
        self.sigma = float(number(sigma, "sigma"))
        if penalty_steps is not None:
            positive_int(penalty_steps, "penalty_steps")
        self.optimizer, self.mode, self.finite_difference = optimizer, mode, finite_difference
        self.penalty_steps = penalty_steps

    @property
    def batches_per_call(self) -> int:
        """Inner batches one `hypergrad` call consumes (steps 0 .. n−1 of ``inner_data``)."""
        if self.mode == "f2sa":
            return self.steps + (self.penalty_steps or max(self.steps, 1))
        return self.steps + 1

    def __repr__(self) -> str:
        return f"FirstOrder(mode={self.mode!r}, steps={self.steps}, optimizer={self.optimizer!r})"

    def _step(self, call: Call) -> Step:
        """θ from ``steps`` inner steps, then the mode's estimate of ∇F there (see the module docstring)."""
        problem, stream = call.problem, call.inner_data
        outer_batch = call.outer_data(0)
        theta, lam = self._inner_solution(call)
        batch = stream(self.steps)
        d_theta, d_lam, f_value = outer_partials(
            problem, theta, lam, outer_batch, theta_too=self.mode == "identity"
        )
        call.monitor.finite(f_value, "outer_loss at the inner solution")
        call.monitor.finite(d_lam, "∂f/∂λ at the inner solution")
        info: dict[str, Any] = {"mode": self.mode, "inner_steps": self.steps, "hvp_count": 0}
        if self.mode == "partial":
            grad = d_lam
        elif self.mode == "identity":
            call.monitor.finite(d_theta, "∂f/∂θ at the inner solution")
            mixed = self._mixed(problem, theta, lam, batch, d_theta, call.capturable)
            grad = tree.sub(d_lam, tree.scale(mixed, self.c))
        else:
            grad, extra = self._f2sa(problem, theta, lam, stream, batch, outer_batch, call.monitor)
            info.update(extra)
        return Step(
            grad=grad,
            inner=theta,
            outer_loss=f_value,
            outer=lam,
            batch=batch,
            checks=((grad, "the first-order hypergradient"),),
            info=info,
        )

    def capture_problem(self) -> str | None:
        """Every mode is capturable."""
        return None

    def _mixed(
        self, problem: BilevelProblem, theta: Params, lam: Params, batch: Any, v: Params, capturable: bool
    ) -> Params:
        """∇²_λθ g · v, by central differences (DARTS) or exactly."""
        if not self.finite_difference:
            return linearize(problem, theta, lam, batch).mixed(v)
        if capturable:
            return self._mixed_on_device(problem, theta, lam, batch, v)
        v_norm = float(tree.norm(v))
        if v_norm == 0.0:
            return tree.zeros_like(lam)
        eps = self.eps / v_norm
        plus = _lambda_grad_of_inner(problem, tree.add(theta, v, eps), lam, batch)
        minus = _lambda_grad_of_inner(problem, tree.add(theta, v, -eps), lam, batch)
        return tree.scale(tree.sub(plus, minus), 1.0 / (2 * eps))

    def _mixed_on_device(
        self, problem: BilevelProblem, theta: Params, lam: Params, batch: Any, v: Params
    ) -> Params:
        """The central difference of `_mixed` with ε = eps/‖v‖ a tensor (no host read); 0 where v = 0."""
        v_norm = tree.norm(v)
        nonzero = v_norm != 0
        eps = self.eps / torch.where(nonzero, v_norm, torch.ones_like(v_norm))
        plus = _lambda_grad_of_inner(problem, tree.add(theta, v, eps), lam, batch)
        minus = _lambda_grad_of_inner(problem, tree.add(theta, v, -eps), lam, batch)
        diff = tree.scale(tree.sub(plus, minus), 1.0 / (2 * eps))
        return {k: torch.where(nonzero, d, torch.zeros_like(d)) for k, d in diff.items()}

    def _f2sa(
        self,
        problem: BilevelProblem,
        z: Params,
        lam: Params,
        stream: DataStream,
        batch: Any,
        outer_batch: Any,
        monitor: Monitor,
    ) -> tuple[Params, dict[str, Any]]:
        n = self.penalty_steps or max(self.steps, 1)
        penalised = _ScaledOuter(problem, self.sigma, outer_batch)
        y, _ = run_inner(
            penalised,  # type: ignore[arg-type]
            self.optimizer,
            z,
            lam,
            stream,
            start=self.steps,
            stop=self.steps + n,
            record=False,
            monitor=monitor,
        )
        monitor.finite(y, "F2SA's penalised inner iterate y")
        _, d_lam_y, _ = outer_partials(problem, y, lam, outer_batch, theta_too=False)
        gy = _lambda_grad_of_inner(problem, y, lam, batch)
        gz = _lambda_grad_of_inner(problem, z, lam, batch)
        grad = tree.add(d_lam_y, tree.sub(gy, gz), self.sigma)
        return grad, {"sigma": self.sigma, "penalty_steps": n}
