"""Second-order information of the inner problem at (θ, λ), the raw material of implicit differentiation.

With G(θ, λ) = ∇_θ g(θ, λ), this gives the Hessian-vector product v ↦ ∇²_θθ g · v = (∂G/∂θ) v and the mixed
product v ↦ ∇²_λθ g · v = (∂G/∂λ)ᵀ v. Both come from one retained graph of G (reverse-over-reverse: each
product is one backward pass, the forward pass is never recomputed), or, with ``hvp="forward"``, the HVP is
forward-over-reverse ``torch.func.jvp(torch.func.grad(g))``, which needs no retained graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .hypergrad import check_scalar
from .problem import BilevelProblem
from .tree import Params, norm


@dataclass
class Linearization:
    """Closures over the retained graph of G = ∇_θ g at one point."""

    hvp: Callable[[Params], Params]
    mixed: Callable[[Params], Params]
    inner_grad: Params
    inner_value: Tensor
    counter: dict[str, int]

    @property
    def inner_grad_norm(self) -> float:
        return float(norm(self.inner_grad))


def _zeros_for_none(grads: tuple[Tensor | None, ...], like: Params) -> Params:
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(like.items(), grads)}


def linearize(
    problem: BilevelProblem, inner: Params, outer: Params, batch: Any, *, hvp: str = "reverse"
) -> Linearization:
    """Build the HVP and mixed-product closures of g at (θ=inner, λ=outer). Inputs are detached first."""
    if hvp not in ("reverse", "forward"):
        raise ValueError(f"hvp must be 'reverse' or 'forward', got {hvp!r}")
    theta = {k: v.detach().requires_grad_(True) for k, v in inner.items()}
    lam = {k: v.detach().requires_grad_(True) for k, v in outer.items()}
    counter = {"hvp": 0, "mixed": 0}
    with torch.enable_grad():
        value = check_scalar(problem.inner_loss(theta, lam, batch), "inner_loss")
        G = torch.autograd.grad(value, list(theta.values()), create_graph=True, allow_unused=True)
    G_dict = _zeros_for_none(G, theta)
    live = [i for i, g in enumerate(G) if g is not None and g.requires_grad]
    keys = list(theta)
    outs = [G[i] for i in live]

    def backward(v: Params, wrt: Params, retain: bool) -> Params:
        if not outs:
            return {k: torch.zeros_like(x) for k, x in wrt.items()}
        got = torch.autograd.grad(
            outs,
            list(wrt.values()),
            grad_outputs=[v[keys[i]] for i in live],
            retain_graph=retain,
            allow_unused=True,
        )
        return _zeros_for_none(got, wrt)

    if hvp == "reverse":

        def hvp_fn(v: Params) -> Params:
            counter["hvp"] += 1
            return backward(v, theta, True)

    else:
        lam_d = {k: v.detach() for k, v in outer.items()}
        theta_d = {k: v.detach() for k, v in inner.items()}

        def grad_fn(t: Params) -> Params:
            return torch.func.grad(
                lambda tt: check_scalar(problem.inner_loss(tt, lam_d, batch), "inner_loss")
            )(t)

        def hvp_fn(v: Params) -> Params:
            counter["hvp"] += 1
            return torch.func.jvp(grad_fn, (theta_d,), (v,))[1]

    def mixed_fn(v: Params) -> Params:
        counter["mixed"] += 1
        return backward(v, lam, True)

    return Linearization(
        hvp=hvp_fn,
        mixed=mixed_fn,
        inner_grad={k: g.detach() for k, g in G_dict.items()},
        inner_value=value.detach(),
        counter=counter,
    )


def outer_partials(
    problem: BilevelProblem, inner: Params, outer: Params, batch: Any
) -> tuple[Params, Params, Tensor]:
    """(∂f/∂θ, ∂f/∂λ, f) at (θ, λ); entries f does not use get zeros."""
    theta = {k: v.detach().requires_grad_(True) for k, v in inner.items()}
    lam = {k: v.detach().requires_grad_(True) for k, v in outer.items()}
    with torch.enable_grad():
        value = check_scalar(problem.outer_loss(theta, lam, batch), "outer_loss")
        grads = torch.autograd.grad(value, [*theta.values(), *lam.values()], allow_unused=True)
    d_theta = _zeros_for_none(grads[: len(theta)], theta)
    d_lam = _zeros_for_none(grads[len(theta) :], lam)
    return d_theta, d_lam, value.detach()
