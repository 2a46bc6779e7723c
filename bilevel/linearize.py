"""Second-order information of the inner problem at (θ, λ), the raw material of implicit differentiation.

With G(θ, λ) = ∇_θ g(θ, λ), this gives the Hessian-vector product v ↦ ∇²_θθ g · v = (∂G/∂θ) v and the mixed
product v ↦ ∇²_λθ g · v = (∂G/∂λ)ᵀ v. Both come from one retained graph of G (reverse-over-reverse: each
product is one backward pass, the forward pass is never recomputed), or, with ``hvp="forward"``, the HVP is
forward-over-reverse ``torch.func.jvp(torch.func.grad(g))``: no graph is retained while the linear system is
solved, and the graph of G is built once, after the solve, for the single mixed product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .problem import BilevelProblem, check_scalar
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
    keys = list(theta)
    graph: dict[str, Any] = {}

    def build_graph() -> None:
        """The retained graph of G = ∇_θ g(θ, λ) (built once, on first need)."""
        with torch.enable_grad():
            value = check_scalar(problem.inner_loss(theta, lam, batch), "inner_loss")
            G = torch.autograd.grad(value, list(theta.values()), create_graph=True, allow_unused=True)
        graph["value"], graph["G"] = value, G
        graph["live"] = [i for i, g in enumerate(G) if g is not None and g.requires_grad]

    def backward(v: Params, wrt: Params, retain: bool) -> Params:
        if "G" not in graph:
            build_graph()
        live, G = graph["live"], graph["G"]
        if not live:
            return {k: torch.zeros_like(x) for k, x in wrt.items()}
        got = torch.autograd.grad(
            [G[i] for i in live],
            list(wrt.values()),
            grad_outputs=[v[keys[i]] for i in live],
            retain_graph=retain,
            allow_unused=True,
        )
        return _zeros_for_none(got, wrt)

    if hvp == "reverse":
        build_graph()
        inner_grad_value = _zeros_for_none(graph["G"], theta)
        value = graph["value"]

        def hvp_fn(v: Params) -> Params:
            counter["hvp"] += 1
            return backward(v, theta, True)

    else:  # forward-over-reverse: no graph is kept while the linear system is solved
        lam_d = {k: v.detach() for k, v in outer.items()}
        theta_d = {k: v.detach() for k, v in inner.items()}

        def loss_of(t: Params) -> Tensor:
            return check_scalar(problem.inner_loss(t, lam_d, batch), "inner_loss")

        grad_fn = torch.func.grad_and_value(loss_of)
        inner_grad_value, value = grad_fn(theta_d)

        def hvp_fn(v: Params) -> Params:
            counter["hvp"] += 1
            return torch.func.jvp(lambda t: grad_fn(t)[0], (theta_d,), (v,))[1]

    def mixed_fn(v: Params) -> Params:
        counter["mixed"] += 1
        return backward(v, lam, True)

    return Linearization(
        hvp=hvp_fn,
        mixed=mixed_fn,
        inner_grad={k: g.detach() for k, g in inner_grad_value.items()},
        inner_value=value.detach(),
        counter=counter,
    )


def outer_partials(
    problem: BilevelProblem, inner: Params, outer: Params, batch: Any, *, theta_too: bool = True
) -> tuple[Params | None, Params, Tensor]:
    """(∂f/∂θ, ∂f/∂λ, f) at (θ, λ); entries f does not use get zeros. ``theta_too=False`` skips ∂f/∂θ
    (returned as None) and its backward pass through θ."""
    theta = {k: v.detach().requires_grad_(theta_too) for k, v in inner.items()}
    lam = {k: v.detach().requires_grad_(True) for k, v in outer.items()}
    wrt = [*theta.values(), *lam.values()] if theta_too else list(lam.values())
    with torch.enable_grad():
        value = check_scalar(problem.outer_loss(theta, lam, batch), "outer_loss")
        if value.requires_grad:
            grads = torch.autograd.grad(value, wrt, allow_unused=True)
        else:
            grads = (None,) * len(wrt)
    n = len(theta) if theta_too else 0
    d_theta = _zeros_for_none(tuple(grads[:n]), theta) if theta_too else None
    d_lam = _zeros_for_none(tuple(grads[n:]), lam)
    return d_theta, d_lam, value.detach()
