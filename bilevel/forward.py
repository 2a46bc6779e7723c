"""Forward-mode hypergradients (forward-mode unrolling, "RTRL"): tangents pushed through the inner trajectory.

For one outer direction u, with θ_{t+1} = Φ(θ_t, s_t, λ; batch_t) the optimizer step on g,

    θ̇_{t+1} = ∂_θΦ · θ̇_t + ∂_sΦ · ṡ_t + ∂_λΦ · u,      dF/dλ · u = ∂_θ f · θ̇_T + ∂_λ f · u,

computed by ``torch.func.jvp`` of the whole T-step map λ ↦ f(θ_T(λ), λ) (the inner gradients are
``torch.func.grad``, so each step is forward-over-reverse). Nothing is stored along the trajectory: memory is
O(d_θ) per direction, independent of T, while reverse-mode unrolling keeps O(T) graphs. The cost is one
tangent pass per outer coordinate, so it pays off when the outer variable has few entries (learning rates,
a weight-decay schedule, a handful of regularisation strengths) and T is long. The gradient is the same as
`Unrolled`'s (the same T-step objective, differentiated exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import tree
from .hypergrad import Call, Solver, Step, check_optimizer
from .monitor import MAX_GROWTH
from .problem import check_scalar
from .tree import Params
from .unrolled import optimizer_for
from .validate import positive_int


class Forward(Solver):
    """Forward-mode unrolled hypergradient; see the module docstring.

    Parameters
    ----------
    optimizer: a `bilevel.optim` optimizer, or a factory ``outer -> optimizer`` (hyper-parameters that are
        outer entries then carry tangents).
    steps: T, the number of inner steps.
    max_directions: refuse outer variables with more entries than this (each entry costs a full tangent
        pass; use `Unrolled` or `Implicit` for large outer variables).

    Cost: d_λ forward-over-reverse passes over T steps. Memory: O(d_θ) per pass, independent of T.
    ``inner_init`` entries that *are* outer tensors (MAML) receive the tangent of that entry.
    """

    def __init__(
        self,
        optimizer: Any,
        steps: int,
        max_directions: int = 256,
        *,
        on_divergence: str = "raise",
        max_growth: float = MAX_GROWTH,
    ) -> None:
        self.optimizer = check_optimizer(optimizer, factory=True)
        self._set_divergence(on_divergence, max_growth)
        self.steps = positive_int(steps, "steps")
        self.max_directions = positive_int(max_directions, "max_directions")

    def __repr__(self) -> str:
        return f"Forward(optimizer={self.optimizer!r}, steps={self.steps})"

    def _check_call(self, inner_init: Params, outer: Params) -> None:
        n_dir = tree.numel(outer)
        if n_dir > self.max_directions:
            raise ValueError(
                f"outer has {n_dir} entries: forward mode needs one pass per entry (max_directions="
                f"{self.max_directions}); use Unrolled or Implicit for large outer variables"
            )

    def _step(self, call: Call) -> Step:
        """One ``torch.func.jvp`` of λ ↦ f(θ_T(λ), λ) per outer entry e_j: ∂F/∂λ_j."""
        batches = [call.inner_data(t) for t in range(self.steps + 1)]
        objective, last = self._objective(call, batches, call.outer_data(0))
        lam0 = tree.detach(call.outer)
        flat = tree.flatten(lam0)
        grads = torch.zeros_like(flat)
        f_value = None
        for j in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[j] = 1.0
            f_value, dj = torch.func.jvp(objective, (lam0,), (tree.unflatten(e, lam0),))
            grads[j] = dj
        grad = tree.unflatten(grads, lam0)
        theta_T = tree.detach(last["theta"])
        return Step(
            grad=grad,
            inner=theta_T,
            outer_loss=f_value,
            outer=lam0,
            batch=batches[self.steps],
            checks=(
                (f_value, "outer_loss after the forward-mode inner loop"),
                (theta_T, f"the inner iterate after {self.steps} steps"),
                (grad, "the forward-mode hypergradient"),
            ),
            # one Hessian-vector product per step and direction
            info={
                "hvp_count": self.steps * flat.numel(),
                "directions": flat.numel(),
                "inner_steps": self.steps,
            },
        )

    def _objective(
        self, call: Call, batches: list[Any], outer_batch: Any
    ) -> tuple[Callable[[Params], Tensor], dict[str, Params]]:
        """λ ↦ f(θ_T(λ), λ) through T optimizer steps on g, and the dict where it leaves θ_T. ``inner_init``
        entries that *are* outer tensors start at λ's entry; optimizer hyper-parameters that are outer tensors
        are λ's (`optimizer_for`)."""
        problem, outer, inner_init = call.problem, call.outer, call.inner_init
        keys = list(outer)
        init_from = {k: next((o for o in keys if inner_init[k] is outer[o]), None) for k in inner_init}
        ids = {id(outer[k]): k for k in keys}
        theta_init = tree.detach(inner_init)
        last: dict[str, Params] = {}

        def objective(lam: Params) -> Tensor:
            opt = optimizer_for(self.optimizer, lam, {i: lam[k] for i, k in ids.items()})
            theta = {k: (lam[init_from[k]] if init_from[k] is not None else v) for k, v in theta_init.items()}
            state = opt.init(theta)
            for t in range(self.steps):
                batch = batches[t]

                def g(th: Params, b: Any = batch) -> Tensor:
                    return check_scalar(problem.inner_loss(th, lam, b), "inner_loss")

                theta, state = opt.step(theta, torch.func.grad(g)(theta), state)
            last["theta"] = theta
            return check_scalar(problem.outer_loss(theta, lam, outer_batch), "outer_loss")

        return objective, last
