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

import time
from typing import Any

import torch
from torch import Tensor

from . import tree
from .hypergrad import Hypergrad, check_scalar, positive_int, validate_call
from .inner import inner_diagnostics
from .problem import BilevelProblem, Data, DataStream
from .tree import Params, check_finite
from .unrolled import optimizer_for


class Forward:
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

    def __init__(self, optimizer: Any, steps: int, max_directions: int = 256) -> None:
        if not ((hasattr(optimizer, "init") and hasattr(optimizer, "step")) or callable(optimizer)):
            raise TypeError(
                "optimizer must be a bilevel.optim optimizer, e.g. optim.SGD(lr=0.1), or a factory "
                "outer -> optimizer"
            )
        self.optimizer = optimizer
        self.steps = positive_int(steps, "steps")
        self.max_directions = positive_int(max_directions, "max_directions")

    @property
    def batches_per_call(self) -> int:
        return self.steps + 1

    def __repr__(self) -> str:
        return f"Forward(optimizer={self.optimizer!r}, steps={self.steps})"

    def hypergrad(
        self,
        problem: BilevelProblem,
        inner_init: Params,
        outer: Params,
        inner_data: Data = None,
        outer_data: Data = None,
    ) -> Hypergrad:
        start = time.perf_counter()
        validate_call(problem, inner_init, outer)
        n_dir = tree.numel(outer)
        if n_dir > self.max_directions:
            raise ValueError(
                f"outer has {n_dir} entries: forward mode needs one pass per entry (max_directions="
                f"{self.max_directions}); use Unrolled or Implicit for large outer variables"
            )
        stream = DataStream(inner_data, "inner_data")
        batches = [stream(t) for t in range(self.steps + 1)]
        outer_batch = DataStream(outer_data, "outer_data")(0)
        keys = list(outer)
        init_from = {k: next((o for o in keys if inner_init[k] is outer[o]), None) for k in inner_init}
        ids = {id(outer[k]): k for k in keys}
        lam0 = tree.detach(outer)
        theta_init = tree.detach(inner_init)
        value: dict[str, Tensor] = {}

        def objective(lam: Params) -> Tensor:
            opt = optimizer_for(self.optimizer, lam, {i: lam[k] for i, k in ids.items()})
            theta = {k: (lam[init_from[k]] if init_from[k] is not None else v) for k, v in theta_init.items()}
            state = opt.init(theta)
            for t in range(self.steps):
                batch = batches[t]

                def g(th: Params, b: Any = batch) -> Tensor:
                    return check_scalar(problem.inner_loss(th, lam, b), "inner_loss")

                theta, state = opt.step(theta, torch.func.grad(g)(theta), state)
            value["theta"] = theta
            return check_scalar(problem.outer_loss(theta, lam, outer_batch), "outer_loss")

        flat = tree.flatten(lam0)
        grads = torch.zeros_like(flat)
        f_value = None
        for j in range(n_dir):
            e = torch.zeros_like(flat)
            e[j] = 1.0
            f_value, dj = torch.func.jvp(objective, (lam0,), (tree.unflatten(e, lam0),))
            grads[j] = dj
        grad = tree.unflatten(grads, lam0)
        theta_T = {k: v.detach() for k, v in value["theta"].items()}
        check_finite(f_value, "outer_loss after the forward-mode inner loop")
        check_finite(theta_T, f"the inner iterate after {self.steps} steps")
        check_finite(grad, "the forward-mode hypergradient")
        info = {
            "seconds": time.perf_counter() - start,
            "outer_loss": float(f_value),
            **inner_diagnostics(problem, theta_T, lam0, batches[self.steps]),
            "hvp_count": self.steps * n_dir,  # one Hessian-vector product per step and direction
            "directions": n_dir,
            "inner_steps": self.steps,
        }
        return Hypergrad(grad=grad, inner=theta_T, info=info)
