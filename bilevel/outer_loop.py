"""The outer loop: projected first-order descent on F(λ) with any hypergradient solver.

    λ_{k+1} = Π_C( step(λ_k, ∇F(λ_k)) )

Warm start of the inner problem: for solvers whose objective is the argmin θ*(λ) (`Implicit`, `FirstOrder`)
the inner solution of step k is the next step's ``inner_init``, so few inner steps per outer step track θ*(λ)
(amortisation; the objective is unchanged). For solvers whose objective is the T-step trajectory from
``inner_init`` (`Unrolled`, `Forward`, and custom solvers unless they say otherwise) every step starts again
from ``inner_init``: carrying θ_T over would change the objective being minimised (a learned learning rate
then converges elsewhere). ``warm_start_inner=True``/``False`` overrides the solver's default.

``graph``: compute each hypergradient with `bilevel.graphed` (one CUDA graph, replayed every step; the step's
inner mini-batches are drawn first and copied into its static buffers). None (default): on CUDA when the
solver has a capturable path (``solver.capture_problem()`` is None), eagerly otherwise, so nothing changes
on CPU; True: always (on CPU the capturable code runs eagerly; an uncapturable solver is an error); False:
never. The graphed step draws its batches before running (a loss that draws random numbers then meets
another RNG state than eagerly) and reads the failure flags once per step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import tree
from .graphed import GraphCaptureError, Graphed, graphed, info_floats, shape_key
from .hypergrad import Hypergrad, Solver, as_solver, check_optimizer
from .problem import BilevelProblem, Data, DataStream
from .tree import Params, as_params
from .validate import positive_int


@dataclass
class MinimizeResult:
    """``outer``: the last outer iterate; ``inner``: the inner point the next step would start from (the last
    inner solution with ``warm_start_inner``, else ``inner_init``; each step's own is ``hg.inner`` in the
    callback); ``history``: one dict per outer
    step with exactly the keys ``step``, ``outer_loss`` (f at that step's inner solution), ``grad_norm``
    (‖∇F‖), ``seconds`` (the whole outer step) and ``info`` (the solver's ``Hypergrad.info``, nested: its
    ``seconds``, ``inner_loss``, ``inner_grad_norm``, ``hvp_count``, ... are ``history[k]["info"][key]``)."""

    outer: Params
    inner: Params
    history: list[dict[str, Any]] = field(default_factory=list)


def _project(constraint: Any, outer: Params) -> Params:
    if constraint is None:
        return outer
    if isinstance(constraint, dict):
        unknown = set(constraint) - set(outer)
        if unknown:
            raise KeyError(
                f"constraint names entries {sorted(unknown)} that are not in outer ({sorted(outer)})"
            )
        return {k: (constraint[k].project(v) if k in constraint else v) for k, v in outer.items()}
    if len(outer) != 1:
        raise ValueError(
            "a single constraint needs a single outer entry; pass constraint={name: Box(...), ...} instead"
        )
    ((k, v),) = outer.items()
    return {k: constraint.project(v)}


def _use_graph(graph: Any, solver: Solver, outer: Params) -> bool:
    """Whether `minimize` runs the graphed hypergradient (see its ``graph`` argument)."""
    if graph not in (None, True, False):
        raise ValueError(f"graph must be None, True or False, got {graph!r}")
    reason = solver.capture_problem()
    if graph is True and reason is not None:
        raise ValueError(f"minimize(graph=True): {reason}")
    if graph is None:
        on_cuda = next(iter(outer.values())).device.type == "cuda"
        return on_cuda and reason is None
    return bool(graph)


def _graphed_step(
    runners: dict[tuple, Graphed],
    solver: Solver,
    problem: BilevelProblem,
    inner: Params,
    outer: Params,
    batches: list[Any] | None,
    obs: list[Any] | None,
    graph: bool | None,
) -> tuple[Hypergrad, bool]:
    """(hypergradient, keep graphing): one outer step by `bilevel.graphed` (one graph per shape of the
    step's batches, built when first needed): the batches copied into the static buffers, one replay, the
    info read as floats. Where the default (``graph=None``) meets a failed capture: a warning, this step
    eagerly on the same batches, and False (the run continues eagerly)."""
    key = shape_key(batches, obs)
    try:
        if key not in runners:
            runners[key] = graphed(solver, problem, inner, outer, inner_data=batches, outer_data=obs)
        hg = runners[key](outer, inner_init=inner, inner_data=batches, outer_data=obs)
    except GraphCaptureError as exc:
        if graph:
            raise
        warnings.warn(f"{exc}; minimize continues eagerly (graph=False silences this)", stacklevel=3)
        return solver.hypergrad(problem, inner, outer, inner_data=batches, outer_data=obs), False
    return Hypergrad(grad=hg.grad, inner=hg.inner, info=info_floats(hg.info)), True


def minimize(
    problem: BilevelProblem,
    solver: Solver,
    outer_init: Params,
    optimizer: Any,
    steps: int,
    constraint: Any = None,
    callback: Callable[[int, Params, Hypergrad], bool | None] | None = None,
    *,
    inner_init: Params,
    inner_data: Data = None,
    outer_data: Data = None,
    warm_start_inner: bool | None = None,
    reset_solver: bool = True,
    graph: bool | None = None,
) -> MinimizeResult:
    """Run ``steps`` projected outer steps of ``optimizer`` (a `bilevel.optim` optimizer) on F.

    ``constraint``: ``None``, one constraint (``Box``, ``CappedSimplex``; needs a single outer entry) or a
    dict ``{outer name: constraint}``; applied after every step and once to ``outer_init``.
    ``callback(step, outer, hypergrad)`` runs after each step; returning True stops early.
    Inner data streams continue across outer steps (each outer step consumes ``solver.batches_per_call``);
    outer data gives one batch per outer step.
    ``warm_start_inner``: start each step's inner problem at the previous solution; None (default): only
    where ``solver.objective_depends_on_init`` is False (`Implicit`, `FirstOrder`; module docstring).
    ``reset_solver``: ``solver.reset()`` first (default: no warm-start v carried over from an earlier run);
    ``False`` keeps it, for one run split into several calls (the worst-case search's segments).
    ``graph``: each hypergradient by `bilevel.graphed` (module docstring): None (default) on CUDA when the
    solver can be captured, True always, False never."""
    positive_int(steps, "steps")
    as_params(outer_init, "outer_init")
    as_params(inner_init, "inner_init")
    as_solver(solver)
    check_optimizer(optimizer)
    if warm_start_inner is None:
        warm_start_inner = not solver.objective_depends_on_init
    inner_stream = DataStream(inner_data, "inner_data")
    outer_stream = DataStream(outer_data, "outer_data")
    per_step = solver.batches_per_call
    if reset_solver:  # a new run: no warm start carried over from an earlier one
        solver.reset()
    outer = _project(constraint, tree.detach(outer_init))
    state = optimizer.init(outer)
    inner = tree.detach(inner_init)
    history: list[dict[str, Any]] = []
    use_graph = _use_graph(graph, solver, outer)
    runners: dict[tuple, Graphed] = {}  # one graph per shape of the step's batches (a short last batch)
    for k in range(steps):
        t0 = time.perf_counter()
        offset = k * per_step
        ob = outer_stream(k)
        if use_graph:
            batches = None if inner_data is None else [inner_stream(offset + t) for t in range(per_step)]
            obs = None if outer_data is None else [ob]
            hg, use_graph = _graphed_step(runners, solver, problem, inner, outer, batches, obs, graph)
        else:
            hg = solver.hypergrad(
                problem,
                inner,
                outer,
                inner_data=(None if inner_data is None else (lambda t, o=offset: inner_stream(o + t))),
                outer_data=(None if outer_data is None else (lambda _t, b=ob: b)),
            )
        with torch.no_grad():
            outer, state = optimizer.step(outer, hg.grad, state)
            outer = _project(constraint, tree.detach(outer))
        if warm_start_inner:
            inner = hg.inner
        history.append(
            {
                "step": k,
                "outer_loss": hg.info.get("outer_loss"),
                "grad_norm": float(tree.norm(hg.grad)),
                "seconds": time.perf_counter() - t0,
                "info": hg.info,
            }
        )
        if callback is not None and callback(k, outer, hg):
            break
    return MinimizeResult(outer=outer, inner=inner, history=history)
