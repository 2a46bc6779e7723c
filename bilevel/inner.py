"""Running the inner optimizer: θ_{t+1}, s_{t+1} = step(θ_t, ∇_θ g(θ_t, λ; batch_t), s_t).

Gradients are taken with reverse-mode autograd. With ``create_graph=True`` the trajectory stays on the graph,
so it can be differentiated (unrolled hypergradients); otherwise every step is detached and memory is O(d_θ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .modules import recording_buffers, solver_call
from .monitor import Monitor
from .problem import BilevelProblem, DataStream, check_scalar
from .tree import Params, check_finite, norm


def inner_grad(
    problem: BilevelProblem,
    inner: Params,
    outer: Params,
    batch: Any,
    *,
    create_graph: bool = False,
    detached: bool = False,
) -> tuple[Params, Tensor]:
    """(∇_θ g(θ, λ; batch), g) with autograd. Unused entries of θ get zero gradients.

    Without ``create_graph`` the result carries no graph; ``detached=True`` promises that ``inner`` and
    ``outer`` already carry none (the inner loop's hot path skips re-detaching them).
    """
    with torch.enable_grad():
        if not create_graph:
            inner = {k: (v if detached else v.detach()).requires_grad_(True) for k, v in inner.items()}
            if not detached:
                outer = {k: v.detach() for k, v in outer.items()}
        else:
            inner = {k: (v if v.requires_grad else v.detach().requires_grad_(True)) for k, v in inner.items()}
        value = check_scalar(problem.inner_loss(inner, outer, batch), "inner_loss")
        grads = torch.autograd.grad(value, list(inner.values()), create_graph=create_graph, allow_unused=True)
    out = {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(inner.items(), grads)}
    return out, value


def inner_diagnostics(
    problem: BilevelProblem, inner: Params, outer: Params, batch: Any, *, as_tensors: bool = False
) -> dict[str, Any]:
    """``inner_loss`` g and ``inner_grad_norm`` ‖∇_θ g‖ at a returned inner solution (one extra gradient);
    floats, or 0-dim tensors with ``as_tensors`` (no host synchronisation)."""
    grads, value = inner_grad(problem, inner, outer, batch)
    if as_tensors:
        return {"inner_loss": value.detach(), "inner_grad_norm": norm(grads)}
    return {"inner_loss": float(value.detach()), "inner_grad_norm": float(norm(grads))}


def run_inner(
    problem: BilevelProblem,
    optimizer: Any,
    inner: Params,
    outer: Params,
    stream: DataStream,
    *,
    start: int,
    stop: int,
    state: Any = None,
    create_graph: bool = False,
    record: bool = True,
    monitor: Monitor | None = None,
) -> tuple[Params, Any]:
    """Steps ``start .. stop-1`` of the inner optimizer; returns the last iterate and optimizer state.

    ``record``: let ``buffers="track"`` modules store their running statistics (off when replaying steps).
    Without a graph, the iterate is checked every 50 steps and after the last one by ``monitor`` (an eager
    `Monitor` by default): finite, and ‖θ_t‖ ≤ max_growth · max(1, ‖θ_start‖).
    """
    if not create_graph:  # detach once; every later iterate is produced under no_grad
        inner, outer, state = detach_tree(inner), detach_tree(outer), detach_tree(state)
        monitor = Monitor() if monitor is None else monitor
    if state is None:
        state = optimizer.init(inner)
    # one grad-mode and recording context for the whole loop (per step they cost ~10% of a small step); the
    # optimizer's own update runs under no_grad below when no graph is kept
    with torch.enable_grad(), recording_buffers(record):
        return _steps(problem, optimizer, inner, outer, stream, start, stop, state, create_graph, monitor)


def _steps(
    problem: BilevelProblem,
    optimizer: Any,
    inner: Params,
    outer: Params,
    stream: DataStream,
    start: int,
    stop: int,
    state: Any,
    create_graph: bool,
    monitor: Monitor | None,
) -> tuple[Params, Any]:
    """The loop of `run_inner` (its grad mode and buffer recording already set)."""
    start_norm = None if create_graph else norm(inner)
    for t in range(start, stop):
        if create_graph:
            grads, _ = inner_grad(problem, inner, outer, stream(t), create_graph=True)
            inner, state = optimizer.step(inner, grads, state)
        else:
            grads = _detached_grad(problem, inner, outer, stream(t))
            with torch.no_grad():  # the update is built without a graph, from our own (detached) iterate
                inner, state = optimizer.step(inner, grads, state)
            # A NaN here would otherwise surface much later, far from its cause.
            if t == stop - 1 or (t - start) % 50 == 49:
                monitor.finite(inner, f"the inner iterate at step {t + 1}")  # type: ignore[union-attr]
                monitor.bounded(inner, start_norm, f"the inner iterate at step {t + 1}")  # type: ignore[union-attr]
    return inner, state


def _detached_grad(problem: BilevelProblem, inner: Params, outer: Params, batch: Any) -> Params:
    """∇_θ g at a detached iterate of our own (``inner_grad(..., detached=True)`` without its dict copies and
    grad-mode switch: the inner loop's hot path, grad mode already on). Marks ``inner``'s tensors as
    requiring grad, in place."""
    leaves = [v.requires_grad_(True) for v in inner.values()]
    value = check_scalar(problem.inner_loss(inner, outer, batch), "inner_loss")
    got = torch.autograd.grad(value, leaves, allow_unused=True)
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(inner.items(), got)}


def detach_tree(tree: Any) -> Any:
    """Detach every tensor leaf of a pytree (dicts, lists, tuples)."""
    return pytree.tree_map(lambda x: x.detach() if isinstance(x, Tensor) else x, tree)


def tensor_leaves(tree: Any) -> list[Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, Tensor)]


def replace_tensor_leaves(tree: Any, new: list[Tensor]) -> Any:
    leaves, spec = pytree.tree_flatten(tree)
    it: Iterator[Tensor] = iter(new)
    leaves = [next(it) if isinstance(x, Tensor) else x for x in leaves]
    return pytree.tree_unflatten(leaves, spec)


@contextlib.contextmanager
def rng_restored(state: tuple[Tensor, list[Tensor]] | None) -> Iterator[None]:
    """Run a block with the given (CPU, CUDA) RNG state, restoring the current one afterwards."""
    if state is None:
        yield
        return
    cpu_now = torch.get_rng_state()
    cuda_now = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])
    try:
        yield
    finally:
        torch.set_rng_state(cpu_now)
        if cuda_now:
            torch.cuda.set_rng_state_all(cuda_now)


def rng_state() -> tuple[Tensor, list[Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def solve_inner(
    problem: BilevelProblem,
    optimizer: Any,
    steps: int,
    inner_init: Params,
    outer: Params,
    inner_data: Any = None,
) -> Params:
    """θ_T: ``steps`` steps of ``optimizer`` on g(·, λ) from ``inner_init`` (detached, no graph kept);
    NaN/Inf or runaway growth of the iterate raises ``FloatingPointError`` naming the step."""
    with solver_call():
        theta, _ = run_inner(
            problem,
            optimizer,
            detach_tree(inner_init),
            detach_tree(outer),
            DataStream(inner_data, "inner_data"),
            start=0,
            stop=steps,
        )
    check_finite(theta, f"the inner solution after {steps} steps")
    return detach_tree(theta)
