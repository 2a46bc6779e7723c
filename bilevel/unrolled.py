"""Reverse-mode differentiation through the inner optimizer's trajectory (ITD / "unrolled").

    θ_{t+1} = Φ(θ_t, λ; batch_t),   F(λ) = f(θ_T, λ),   ∇F = ∂_λ f + Σ_t (∂Φ_t/∂λ)ᵀ a_{t+1},
    a_T = ∂_θ f,   a_t = (∂Φ_t/∂θ)ᵀ a_{t+1}

Gradients reach every tensor that requires grad and that the trajectory depends on: the ``outer`` entries,
an optimizer hyper-parameter that *is* one of them (``optim.SGD(lr=outer["lr"])``), and ``inner_init`` when
it is (a function of) an outer entry (MAML: ``inner_init = {"w": outer["w0"]}``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from . import tree
from .hypergrad import Call, Solver, Step, check_optimizer, is_optimizer
from .inner import (
    detach_tree,
    replace_tensor_leaves,
    rng_restored,
    rng_state,
    run_inner,
    tensor_leaves,
)
from .monitor import MAX_GROWTH
from .problem import BilevelProblem, DataStream, check_scalar
from .tree import Params
from .validate import positive_int


class _Replay:
    """A data stream that can be replayed: checkpointed backward passes revisit earlier steps.

    A replayed step sees the same batch and leaves the loss (dropout) the same random stream as in the
    forward pass. Every replay starts at a segment's first step with the RNG state saved there, and makes
    the same calls (data, then loss) in the same order as the forward pass, so a callable (random access) is
    simply called again: it meets the same RNG state and draws the same mini-batch, and nothing is kept per
    step. An iterable's batches are cached, O(T) of them, with the RNG state after each, because an iterator
    cannot go back.
    """

    def __init__(self, stream: DataStream) -> None:
        self.stream = stream
        self.cache: dict[int, tuple[Any, Any]] = {}

    def __call__(self, step: int) -> Any:
        if self.stream.random_access:
            return self.stream(step)
        if step not in self.cache:
            batch = self.stream(step)
            self.cache[step] = (batch, rng_state())
            return batch
        batch, after = self.cache[step]
        _set_rng(after)
        return batch


def _set_rng(state: Any) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def _rebind(value: Any, id2lam: dict[int, Tensor]) -> Any:
    """``value`` with every tensor that is one of the caller's outer tensors replaced by its graph copy."""
    if isinstance(value, Tensor):
        return id2lam.get(id(value), value)
    if isinstance(value, tuple):
        return tuple(_rebind(v, id2lam) for v in value)
    return value


def optimizer_for(optimizer: Any, lam: Params, id2lam: dict[int, Tensor]) -> Any:
    """The inner optimizer of one call, its hyper-parameters on ``lam`` where they are outer entries: a
    factory is called with ``lam``; a (dataclass) optimizer whose hyper-parameter *is* one of the caller's
    outer tensors (``id2lam`` maps their ids) gets ``lam``'s version of that tensor."""
    if not is_optimizer(optimizer):
        built = optimizer(lam)
        if not is_optimizer(built):
            raise TypeError("the optimizer factory must return a bilevel.optim optimizer")
        return built
    if not dataclasses.is_dataclass(optimizer):
        return optimizer
    changes = {}
    for f in dataclasses.fields(optimizer):
        value = getattr(optimizer, f.name)
        new = _rebind(value, id2lam)
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(optimizer, **changes) if changes else optimizer


class Unrolled(Solver):
    """Unrolled (iterative) differentiation.

    Parameters
    ----------
    optimizer: a differentiable `bilevel.optim` optimizer; its hyper-parameters may be outer tensors.
    steps: T, the number of inner steps.
    truncate: K — differentiate only the last K steps (truncated back-propagation; biased, with a bias that
        decays geometrically in K for strongly convex g). ``None``: all T steps.
    checkpoint: store only every s-th iterate (s = ⌈√K⌉ by default, or ``segment``) and recompute each
        segment during the backward pass: memory O(√K) iterates instead of O(K) graphs, one extra forward
        pass of compute, and the same gradient as the full unroll. Losses that draw random numbers are
        replayed with the same RNG state; data callables are called again, iterables' batches are cached.

    Cost: T inner gradients with graph + a backward pass ≈ K HVPs. Memory: O(K · graph of one step).
    """

    def __init__(
        self,
        optimizer: Any,
        steps: int,
        truncate: int | None = None,
        checkpoint: bool = False,
        segment: int | None = None,
        *,
        on_divergence: str = "raise",
        max_growth: float = MAX_GROWTH,
    ) -> None:
        self.optimizer = check_optimizer(optimizer, factory=True)
        self._set_divergence(on_divergence, max_growth)
        self.steps = positive_int(steps, "steps")
        if truncate is not None:
            positive_int(truncate, "truncate")
        self.truncate = truncate
        self.checkpoint = bool(checkpoint)
        if segment is not None:
            positive_int(segment, "segment")
        self.segment = segment

    def __repr__(self) -> str:
        return (
            f"Unrolled(optimizer={self.optimizer!r}, steps={self.steps}, truncate={self.truncate}, "
            f"checkpoint={self.checkpoint})"
        )

    def capture_problem(self) -> str | None:
        """Full and truncated unrolling are capturable; checkpointing saves and restores the RNG state
        between segments (host-side), so it is not."""
        if self.checkpoint:
            return (
                "Unrolled(checkpoint=True) saves and restores the RNG state between its segments on the "
                "host; use checkpoint=False (or truncate=K) to capture, or run it eagerly (graph=False)"
            )
        return None

    def _step(self, call: Call) -> Step:
        """Run T − K detached steps, then differentiate f(θ_T, λ) through the last K (see the module
        docstring), fully or by checkpointed segments."""
        problem, stream = call.problem, call.inner_data
        outer_batch = call.outer_data(0)
        T = self.steps
        K = T if self.truncate is None else min(self.truncate, T)
        lam = {
            k: (v if v.is_leaf and v.requires_grad else v.detach().requires_grad_(True))
            for k, v in call.outer.items()
        }
        # The caller's outer tensors may also be the initialisation (MAML) or an optimizer hyper-parameter
        # (a learned learning rate): those uses must see the graph copies in `lam`.
        id2lam = {id(call.outer[k]): lam[k] for k in call.outer}
        id2lam.update({i: lam[k] for i, k in call.outer_aliases.items()})
        theta0 = {
            k: id2lam.get(id(v), v if v.grad_fn is not None else v.detach())
            for k, v in call.inner_init.items()
        }
        opt = optimizer_for(self.optimizer, lam, id2lam)

        theta, state = (theta0, None)
        if K < T:  # the first T − K steps are not differentiated
            theta, state = run_inner(
                problem, opt, tree.detach(theta0), lam, stream, start=0, stop=T - K, monitor=call.monitor
            )
        info: dict[str, Any] = {"hvp_count": K, "inner_steps": T, "differentiated_steps": K}
        # (the backward pass through K steps costs about K Hessian-vector products)
        if self.checkpoint:
            grad, theta_T, f_value, info["checkpoints"] = self._checkpointed(
                problem, opt, theta, state, lam, _Replay(stream), T - K, T, outer_batch, propagate_init=K == T
            )
        else:
            grad, theta_T, f_value = _full_unroll(
                problem, opt, theta, state, lam, stream, T - K, T, outer_batch
            )
        # The diagnostics at stream(T) cost one more inner gradient (about 2% of the T = 20 MLP unroll of the
        # benchmarks), computed in this call on purpose: deferring it would move its random draws (dropout)
        # after the caller's next ones and let later changes to the loss's closures alter it.
        return Step(
            grad=grad,
            inner=theta_T,
            outer_loss=f_value,
            outer=lam,
            batch=stream(T),
            checks=(
                (f_value, "outer_loss after the unrolled inner loop"),
                (grad, "the unrolled hypergradient"),
                (tree.detach(theta_T), f"the inner iterate after {T} steps"),
            ),
            info=info,
        )

    def _checkpointed(
        self,
        problem: BilevelProblem,
        opt: Any,
        theta: Params,
        state: Any,
        lam: Params,
        stream: _Replay,
        first: int,
        last: int,
        outer_batch: Any,
        propagate_init: bool,
    ) -> tuple[Params, Params, Tensor, int]:
        """Checkpointed reverse mode over steps ``first .. last − 1``: (∇F, θ_T, f, number of checkpoints).

        Forward: keep (θ_a, s_a, RNG state) at every segment start a. Backward, segment by segment from the
        last: replay it on the graph from its checkpoint and pull the adjoints (a_θ, a_s) back through it,
        adding its λ-contribution to ∇F; then, with ``propagate_init``, the adjoint of θ_0 through θ_0(λ).
        """
        seg = self.segment or max(1, math.ceil(math.sqrt(last - first)))
        bounds = list(range(first, last, seg)) + [last]
        segments = list(zip(bounds[:-1], bounds[1:]))
        if state is None:
            state = opt.init(tree.detach(theta))
        ckpts, theta_T = _forward_checkpoints(problem, opt, theta, state, tree.detach(lam), stream, segments)
        adj = _Adjoint.at_outer_loss(problem, theta_T, lam, outer_batch)
        for (a, b), ckpt in zip(reversed(segments), reversed(ckpts)):
            adj.back_through_segment(problem, opt, lam, stream, a, b, ckpt)
        if propagate_init:  # θ_0 may itself depend on λ (MAML-style initialisation)
            adj.back_through_init(theta, lam)
        return dict(zip(lam.keys(), adj.grad)), theta_T, adj.f_value, len(ckpts)


def _full_unroll(
    problem: BilevelProblem,
    opt: Any,
    theta: Params,
    state: Any,
    lam: Params,
    stream: DataStream,
    first: int,
    last: int,
    outer_batch: Any,
) -> tuple[Params, Params, Tensor]:
    """Steps ``first .. last − 1`` on the graph, then (∇_λ f(θ_T(λ), λ), θ_T, f) by one backward pass."""
    with torch.enable_grad():
        theta_T, _ = run_inner(
            problem, opt, theta, lam, stream, start=first, stop=last, state=state, create_graph=True
        )
        f = check_scalar(problem.outer_loss(theta_T, lam, outer_batch), "outer_loss")
        if f.requires_grad:
            got = torch.autograd.grad(f, list(lam.values()), allow_unused=True)
        else:  # f depends on neither θ nor λ
            got = (None,) * len(lam)
    grad = {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(lam.items(), got)}
    return grad, theta_T, f.detach()


def _forward_checkpoints(
    problem: BilevelProblem,
    opt: Any,
    theta: Params,
    state: Any,
    lam_d: Params,
    stream: _Replay,
    segments: list[tuple[int, int]],
) -> tuple[list[tuple[Params, Any, Any]], Params]:
    """The detached forward pass: (θ_a, s_a, RNG state) at the start a of every segment, and θ_T."""
    ckpts = []
    th, st = tree.detach(theta), detach_tree(state)
    for a, b in segments:
        ckpts.append((th, st, rng_state()))
        th, st = run_inner(problem, opt, th, lam_d, stream, start=a, stop=b, state=st)
    return ckpts, th


def _zeros_for_none(grads: Any, like: Any) -> list[Tensor]:
    return [torch.zeros_like(v) if g is None else g for v, g in zip(like, grads)]


class _Adjoint:
    """The reverse sweep's running values: a_θ = ∂F/∂θ_t, a_s = ∂F/∂s_t (optimizer state; None until the
    first segment is pulled back), the λ-gradient accumulated so far, and f(θ_T, λ)."""

    def __init__(self, theta: list[Tensor], grad: list[Tensor], f_value: Tensor) -> None:
        self.theta, self.grad, self.f_value = theta, grad, f_value
        self.state: list[Tensor] | None = None

    @classmethod
    def at_outer_loss(
        cls, problem: BilevelProblem, theta_T: Params, lam: Params, outer_batch: Any
    ) -> _Adjoint:
        """a_θ = ∂_θ f(θ_T, λ) and ∇F ← ∂_λ f(θ_T, λ)."""
        th_T = {k: v.detach().requires_grad_(True) for k, v in theta_T.items()}
        with torch.enable_grad():
            f = check_scalar(problem.outer_loss(th_T, lam, outer_batch), "outer_loss")
            wrt = [*th_T.values(), *lam.values()]
            got = torch.autograd.grad(f, wrt, allow_unused=True) if f.requires_grad else (None,) * len(wrt)
        adj_theta = _zeros_for_none(got[: len(th_T)], th_T.values())
        grad = _zeros_for_none(got[len(th_T) :], lam.values())
        return cls(adj_theta, grad, f.detach())

    def back_through_segment(
        self,
        problem: BilevelProblem,
        opt: Any,
        lam: Params,
        stream: _Replay,
        a: int,
        b: int,
        ckpt: tuple[Params, Any, Any],
    ) -> None:
        """Replay steps a .. b − 1 on the graph from their checkpoint (same RNG state, no buffer recording)
        and pull (a_θ, a_s) at b back to a: one vector-Jacobian product, its λ-part added to ∇F."""
        th_a, st_a, rng = ckpt
        th_a = {k: v.detach().requires_grad_(True) for k, v in th_a.items()}
        st_leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in tensor_leaves(st_a)]
        st_a = replace_tensor_leaves(st_a, st_leaves)
        with torch.enable_grad(), rng_restored(rng):
            th_b, st_b = run_inner(
                problem, opt, th_a, lam, stream, start=a, stop=b, state=st_a, create_graph=True, record=False
            )
        outs, cots = [], []
        for v, adj in zip(th_b.values(), self.theta):
            if v.requires_grad:
                outs.append(v)
                cots.append(adj)
        if self.state is not None:
            for v, adj in zip(tensor_leaves(st_b), self.state):
                if v.requires_grad:
                    outs.append(v)
                    cots.append(adj)
        float_state = [x for x in st_leaves if x.requires_grad]
        inputs = [*th_a.values(), *float_state, *lam.values()]
        g = (
            torch.autograd.grad(outs, inputs, grad_outputs=cots, allow_unused=True)
            if outs
            else [None] * len(inputs)
        )
        n_th = len(th_a)
        self.theta = _zeros_for_none(g[:n_th], th_a.values())
        it = iter(g[n_th : n_th + len(float_state)])
        self.state = []
        for x in st_leaves:
            gi = next(it) if x.requires_grad else None
            self.state.append(torch.zeros_like(x) if gi is None else gi)
        self._add_to_grad(g[n_th + len(float_state) :])

    def back_through_init(self, theta0: Params, lam: Params) -> None:
        """∇F += (∂θ_0/∂λ)ᵀ a_θ, where θ_0 is a function of λ (MAML: ``inner_init = {"w": outer["w0"]}``)."""
        pairs = [(v, adj) for v, adj in zip(theta0.values(), self.theta) if v.requires_grad]
        if pairs:
            with torch.enable_grad():
                g = torch.autograd.grad(
                    [p for p, _ in pairs],
                    list(lam.values()),
                    grad_outputs=[c for _, c in pairs],
                    allow_unused=True,
                )
            self._add_to_grad(g)

    def _add_to_grad(self, grads: Any) -> None:
        for i, gi in enumerate(grads):
            if gi is not None:
                self.grad[i] = self.grad[i] + gi
