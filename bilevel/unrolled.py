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
import time
from typing import Any

import torch
from torch import Tensor

from . import tree
from .hypergrad import Hypergrad, check_scalar, positive_int, validate_call
from .inner import (
    detach_tree,
    inner_diagnostics,
    replace_tensor_leaves,
    rng_restored,
    rng_state,
    run_inner,
    tensor_leaves,
)
from .problem import BilevelProblem, Data, DataStream
from .tree import Params, check_finite


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
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "step")):
        built = optimizer(lam)
        if not (hasattr(built, "init") and hasattr(built, "step")):
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


class Unrolled:
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
    ) -> None:
        if not ((hasattr(optimizer, "init") and hasattr(optimizer, "step")) or callable(optimizer)):
            raise TypeError(
                "optimizer must be a bilevel.optim optimizer (with init and step), e.g. optim.SGD(lr=0.1), "
                "or a factory outer -> optimizer, e.g. lambda outer: optim.SGD(lr=outer['lr'])"
            )
        self.optimizer = optimizer
        self.steps = positive_int(steps, "steps")
        if truncate is not None:
            positive_int(truncate, "truncate")
        self.truncate = truncate
        self.checkpoint = bool(checkpoint)
        if segment is not None:
            positive_int(segment, "segment")
        self.segment = segment

    @property
    def batches_per_call(self) -> int:
        """Inner batches one `hypergrad` call consumes (steps 0 .. T of ``inner_data``)."""
        return self.steps + 1

    def __repr__(self) -> str:
        return (
            f"Unrolled(optimizer={self.optimizer!r}, steps={self.steps}, truncate={self.truncate}, "
            f"checkpoint={self.checkpoint})"
        )

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
        stream = DataStream(inner_data, "inner_data")
        outer_batch = DataStream(outer_data, "outer_data")(0)
        T = self.steps
        K = T if self.truncate is None else min(self.truncate, T)
        lam = {
            k: (v if v.is_leaf and v.requires_grad else v.detach().requires_grad_(True))
            for k, v in outer.items()
        }
        # The caller's outer tensors may also be the initialisation (MAML) or an optimizer hyper-parameter
        # (a learned learning rate): those uses must see the graph copies in `lam`.
        id2lam = {id(outer[k]): lam[k] for k in outer}
        theta0 = {
            k: id2lam.get(id(v), v if v.grad_fn is not None else v.detach()) for k, v in inner_init.items()
        }
        opt = optimizer_for(self.optimizer, lam, id2lam)

        theta, state = (theta0, None)
        if K < T:  # the first T − K steps are not differentiated
            theta, state = run_inner(problem, opt, tree.detach(theta0), lam, stream, start=0, stop=T - K)
        if self.checkpoint:
            grad, theta_T, f_value, n_ckpt = self._checkpointed(
                problem, opt, theta, state, lam, _Replay(stream), T - K, T, outer_batch, propagate_init=K == T
            )
        else:
            with torch.enable_grad():
                theta_T, _ = run_inner(
                    problem,
                    opt,
                    theta,
                    lam,
                    stream,
                    start=T - K,
                    stop=T,
                    state=state,
                    create_graph=True,
                )
                f = check_scalar(problem.outer_loss(theta_T, lam, outer_batch), "outer_loss")
                if f.requires_grad:
                    got = torch.autograd.grad(f, list(lam.values()), allow_unused=True)
                else:  # f depends on neither θ nor λ
                    got = (None,) * len(lam)
            grad = {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(lam.items(), got)}
            f_value, n_ckpt = f.detach(), None
        check_finite(f_value, "outer_loss after the unrolled inner loop")
        check_finite(grad, "the unrolled hypergradient")
        theta_T = tree.detach(theta_T)
        check_finite(theta_T, f"the inner iterate after {T} steps")
        # The diagnostics cost one more inner gradient (about 2% of the T = 20 MLP unroll of the benchmarks),
        # computed now on purpose: deferring it would move its random draws (dropout) after the caller's next
        # ones and let later changes to the loss's closures alter it.
        info = {
            "seconds": time.perf_counter() - start,
            "outer_loss": float(f_value),
            **inner_diagnostics(problem, theta_T, lam, stream(T)),
            "hvp_count": K,  # the backward pass through K steps costs about K Hessian-vector products
            "inner_steps": T,
            "differentiated_steps": K,
        }
        if n_ckpt is not None:
            info["checkpoints"] = n_ckpt
        return Hypergrad(grad=tree.detach(grad), inner=theta_T, info=info)

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
        seg = self.segment or max(1, math.ceil(math.sqrt(last - first)))
        bounds = list(range(first, last, seg)) + [last]
        lam_d = tree.detach(lam)
        theta_in = theta
        if state is None:
            state = opt.init(tree.detach(theta))
        ckpts = []
        th, st = tree.detach(theta), detach_tree(state)
        for a, b in zip(bounds[:-1], bounds[1:]):
            ckpts.append((th, st, rng_state()))
            th, st = run_inner(problem, opt, th, lam_d, stream, start=a, stop=b, state=st)
        theta_T = th
        th_T = {k: v.detach().requires_grad_(True) for k, v in theta_T.items()}
        with torch.enable_grad():
            f = check_scalar(problem.outer_loss(th_T, lam, outer_batch), "outer_loss")
            wrt = [*th_T.values(), *lam.values()]
            got = torch.autograd.grad(f, wrt, allow_unused=True) if f.requires_grad else (None,) * len(wrt)
        adj_theta = [torch.zeros_like(v) if g is None else g for v, g in zip(th_T.values(), got[: len(th_T)])]
        grad = [torch.zeros_like(v) if g is None else g for v, g in zip(lam.values(), got[len(th_T) :])]
        adj_state: list[Tensor] | None = None
        lam_list = list(lam.values())
        for (a, b), (th_a, st_a, rng) in zip(reversed(list(zip(bounds[:-1], bounds[1:]))), reversed(ckpts)):
            th_a = {k: v.detach().requires_grad_(True) for k, v in th_a.items()}
            st_leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in tensor_leaves(st_a)]
            st_a = replace_tensor_leaves(st_a, st_leaves)
            with torch.enable_grad(), rng_restored(rng):
                th_b, st_b = run_inner(
                    problem,
                    opt,
                    th_a,
                    lam,
                    stream,
                    start=a,
                    stop=b,
                    state=st_a,
                    create_graph=True,
                    record=False,
                )
            outs, cots = [], []
            for v, adj in zip(th_b.values(), adj_theta):
                if v.requires_grad:
                    outs.append(v)
                    cots.append(adj)
            if adj_state is not None:
                for v, adj in zip(tensor_leaves(st_b), adj_state):
                    if v.requires_grad:
                        outs.append(v)
                        cots.append(adj)
            float_state = [x for x in st_leaves if x.requires_grad]
            inputs = [*th_a.values(), *float_state, *lam_list]
            g = (
                torch.autograd.grad(outs, inputs, grad_outputs=cots, allow_unused=True)
                if outs
                else [None] * len(inputs)
            )
            n_th = len(th_a)
            adj_theta = [torch.zeros_like(v) if gi is None else gi for v, gi in zip(th_a.values(), g[:n_th])]
            it = iter(g[n_th : n_th + len(float_state)])
            adj_state = []
            for x in st_leaves:
                gi = next(it) if x.requires_grad else None
                adj_state.append(torch.zeros_like(x) if gi is None else gi)
            for i, gi in enumerate(g[n_th + len(float_state) :]):
                if gi is not None:
                    grad[i] = grad[i] + gi
        if propagate_init:  # θ_0 may itself depend on λ (MAML-style initialisation)
            pairs = [(v, adj) for v, adj in zip(theta_in.values(), adj_theta) if v.requires_grad]
            if pairs:
                with torch.enable_grad():
                    g = torch.autograd.grad(
                        [p for p, _ in pairs], lam_list, grad_outputs=[c for _, c in pairs], allow_unused=True
                    )
                for i, gi in enumerate(g):
                    if gi is not None:
                        grad[i] = grad[i] + gi
        return dict(zip(lam.keys(), grad)), theta_T, f.detach(), len(ckpts)
