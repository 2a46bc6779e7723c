"""Profiling cases: a problem of this package at a given size, on a device, ready for `bilevel.profile`.

``worstforget bench`` profiles these; so can anyone:

    case = closed_form_case("logistic", 20, 20)
    profile(solvers=..., reference=case.closed_form, **case.profile_args())

The closed-form problems (`ridge`, `weighted_ridge`, `logistic`, `quadratic`) come with their exact ∇F (in
float64 on the CPU, whatever the case's dtype and device) and the inner step 1/L of their inner Hessian; the
re-weighting MLP (`reweighting_case`) has no closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..problem import BilevelProblem, Data
from ._base import Params, ReferenceProblem
from .logistic import logistic
from .quadratic import quadratic
from .reweighting import ReweightingInstance
from .ridge import ridge, weighted_ridge

CLOSED_FORM = ("ridge", "weighted-ridge", "logistic", "quadratic")


@dataclass(frozen=True, eq=False)
class ProfileCase:
    """Everything one ``solver.hypergrad`` call needs (on the case's device), the inner step size ``lr`` to
    give every solver, the exact ∇F where known (``closed_form``, float64, CPU) and a one-line description."""

    problem: BilevelProblem
    inner_init: Params
    outer: Params
    inner_data: Data
    outer_data: Data
    lr: float
    closed_form: Params | None
    description: str

    def profile_args(self) -> dict[str, Any]:
        """``problem``, ``inner_init``, ``outer``, ``inner_data`` and ``outer_data`` for `bilevel.profile`."""
        return {
            "problem": self.problem,
            "inner_init": self.inner_init,
            "outer": self.outer,
            "inner_data": self.inner_data,
            "outer_data": self.outer_data,
        }


def _closed_form(name: str, dim: int, outer_dim: int, seed: int, dtype: torch.dtype, device: Any) -> Any:
    """The reference problem ``name`` at size (``dim``, ``outer_dim``); the quadratic is built on ``device``
    (its losses close over their matrices), the others stay on the CPU (their data travels as batches)."""
    if name == "ridge":
        n, m = max(4 * dim, 100), max(2 * dim, 50)
        return ridge(n=n, m=m, p=dim, per_feature=outer_dim > 1, seed=seed, dtype=dtype)
    if name == "logistic":
        n, m = max(10 * dim, 200), max(5 * dim, 100)
        return logistic(n=n, m=m, p=dim, per_feature=outer_dim > 1, seed=seed, dtype=dtype)
    if name == "weighted-ridge":
        return weighted_ridge(n=outer_dim, m=max(outer_dim // 2, 10), p=dim, seed=seed, dtype=dtype)
    if name == "quadratic":
        return quadratic(dx=outer_dim, dy=dim, seed=seed, dtype=dtype, device=device)
    raise ValueError(f"name must be one of {', '.join(CLOSED_FORM)}, got {name!r}")


def closed_form_case(
    name: str,
    dim: int,
    outer_dim: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> ProfileCase:
    """A closed-form problem as a `ProfileCase` on ``device``:

    - ``ridge`` / ``logistic``: ``dim`` features p, n = max(4p, 100) / max(10p, 200) training rows and
      m = max(2p, 50) / max(5p, 100) validation rows; ``outer_dim`` 1 (one λ) or p (one λ per feature);
    - ``weighted-ridge``: ``dim`` features, ``outer_dim`` training rows (one weight each), max(n/2, 10)
      validation rows;
    - ``quadratic``: inner size ``dim``, outer size ``outer_dim``.

    The data reach the losses as batches (``[batch]``, one fixed batch; the weighted ridge's training batch
    carries the row indices), so the same losses run on the CPU and on CUDA; the quadratic has no data.
    ``lr`` = 1/L (L the largest eigenvalue of the inner Hessian); ``closed_form`` = ∇F at ``outer``.
    """
    device = torch.device(device)
    ref: ReferenceProblem = _closed_form(name, dim, outer_dim, seed, dtype, device)
    on_cpu64 = dtype == torch.float64 and device.type == "cpu"
    exact = ref if on_cpu64 else _closed_form(name, dim, outer_dim, seed, torch.float64, None)
    inner_data = outer_data = None
    if name != "quadratic":
        d = {k: ref.data[k].to(device) for k in ("X", "y", "X_val", "y_val")}
        index = (torch.arange(outer_dim, device=device),) if name == "weighted-ridge" else ()
        inner_data, outer_data = [(d["X"], d["y"], *index)], [(d["X_val"], d["y_val"])]
    return ProfileCase(
        problem=ref.problem,
        inner_init={k: v.to(device) for k, v in ref.inner_init.items()},
        outer={k: v.to(device) for k, v in ref.outer.items()},
        inner_data=inner_data,
        outer_data=outer_data,
        lr=1.0 / float(ref.L),
        closed_form=exact.hypergrad(exact.outer),
        description=f"{ref!r}, inner lr 1/L = {1.0 / float(ref.L):.4g}",
    )


def reweighting_case(instance: ReweightingInstance, *, lr: float, description: str) -> ProfileCase:
    """A `ReweightingInstance` (fixed data inside its losses: no batches) as a `ProfileCase` with inner step
    ``lr``; no closed form."""
    return ProfileCase(
        problem=instance.problem,
        inner_init=instance.inner_init,
        outer=instance.outer,
        inner_data=None,
        outer_data=None,
        lr=lr,
        closed_form=None,
        description=description,
    )
