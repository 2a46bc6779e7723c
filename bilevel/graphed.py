"""`graphed`: one hypergradient call captured once as a CUDA graph and replayed, with static input buffers.

On a GPU a hypergradient of a small problem is launch-bound: T unrolled steps cost thousands of kernel
launches of a few microseconds of arithmetic each. `graphed(solver, problem, inner_init, outer, inner_data,
outer_data)` copies its inputs into static buffers and returns ``hg``; ``hg(outer)`` copies the new outer
values (and, when given, a new ``inner_init`` and new batches) into those buffers and

- on CUDA: captures the solver's capturable call (`Solver.hypergrad_capturable`: no host synchronisation,
  checks as device-side flags) once, after ``warmup`` eager runs on a side stream, with
  ``torch.cuda.CUDAGraph``, and replays it at every later call;
- elsewhere (CPU): runs the same capturable code eagerly on the buffers, so CPU tests exercise it.

Then it clones the results out of the static outputs, reads the failure flags once (``check=True``; raising
``FloatingPointError`` naming the first failing check, as the eager call would), and returns a `Hypergrad`
whose ``info`` values are tensors (``seconds`` aside): read them when needed. The result equals the eager
``solver.hypergrad`` on the same inputs (bit for bit on CPU in float64; implicit solvers equal it when the
eager linear solve runs all ``max_iter`` iterations, as the capturable one always does).

What cannot be captured is refused when ``graphed`` is built: a solver without a capturable path
(``Unrolled(checkpoint=True)``, ``Implicit`` with ``Direct``/``FixedPoint`` or ``warm_start=True``,
`Forward`, custom solvers), data given as a callable or a one-shot iterable (Python-side choices, such as
random mini-batch indices, would be frozen into the graph: draw the batches and pass them as a list at each
call instead), and, at a call, inputs whose keys, shapes, dtypes or devices differ from the captured ones.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .hypergrad import Hypergrad, Solver, as_solver, validate_call
from .monitor import Monitor
from .problem import BilevelProblem, DataStream
from .tree import Params
from .validate import positive_int

__all__ = ["GraphCaptureError", "Graphed", "graphed"]


class GraphCaptureError(RuntimeError):
    """The CUDA graph capture of a hypergradient failed (something synchronised with the host)."""


def _static_batches(data: Any, name: str) -> list[Any] | None:
    """Static copies of a list of batches (tensor leaves cloned), or None; anything else is refused."""
    if data is None:
        return None
    DataStream(data, name)  # the eager checks (a Tensor or tuple is refused with their message)
    if callable(data) and not isinstance(data, list):
        raise TypeError(
            f"graphed(): {name} is a callable; it would run once, at capture, and its Python-side choices "
            "(random mini-batch indices) would be frozen into the graph. Draw the batches yourself and pass "
            f"them as a list: hg(outer, {name}=[batch_0, batch_1, ...]) at every call"
        )
    if not isinstance(data, list):
        raise TypeError(
            f"graphed(): {name} must be None or a list of batches (their tensors become static input "
            f"buffers), got {type(data).__name__}; pass list(...) of one call's batches"
        )
    if not data:
        raise ValueError(f"graphed(): {name} is an empty list")
    return [pytree.tree_map(lambda x: x.detach().clone() if isinstance(x, Tensor) else x, b) for b in data]


def _mismatch(name: str, what: str, got: Any, captured: Any) -> ValueError:
    return ValueError(
        f"graphed(): {name} has {what} {got} but the captured call has {captured}: shapes, dtypes and "
        "devices cannot change between calls of one graphed hypergradient; build another graphed(...) for "
        "them"
    )


def _copy_into(static: Tensor, new: Any, name: str) -> None:
    if not isinstance(new, Tensor):
        raise TypeError(f"graphed(): {name} must be a tensor, got {type(new).__name__}")
    for what in ("shape", "dtype", "device"):
        if getattr(new, what) != getattr(static, what):
            raise _mismatch(name, what, getattr(new, what), getattr(static, what))
    with torch.no_grad():
        static.copy_(new.detach())


def _fill_params(static: Params, new: Params, name: str) -> None:
    if not isinstance(new, dict) or set(new) != set(static):
        got = sorted(new) if isinstance(new, dict) else type(new).__name__
        raise ValueError(
            f"graphed(): {name} must have the keys {sorted(static)} of the captured call, got {got}"
        )
    for k, v in static.items():
        _copy_into(v, new[k], f"{name}[{k!r}]")


def _fill_batches(static: list[Any] | None, new: Any, name: str) -> None:
    if static is None:
        raise ValueError(f"graphed(): {name} was None when built; it cannot be given at a call")
    if not isinstance(new, list) or len(new) != len(static):
        got = len(new) if isinstance(new, list) else type(new).__name__
        raise ValueError(
            f"graphed(): {name} must be a list of {len(static)} batches, as when built; got {got}"
        )
    for t, (old, fresh) in enumerate(zip(static, new)):
        old_leaves, old_spec = pytree.tree_flatten(old)
        new_leaves, new_spec = pytree.tree_flatten(fresh)
        if old_spec != new_spec:
            raise _mismatch(f"{name}[{t}]", "the structure", new_spec, old_spec)
        for i, (a, b) in enumerate(zip(old_leaves, new_leaves)):
            if isinstance(a, Tensor):
                _copy_into(a, b, f"{name}[{t}] (leaf {i})")
            elif a != b:
                raise _mismatch(f"{name}[{t}] (leaf {i})", "the value", b, a)


def _clone_result(hg: Hypergrad, seconds: float) -> Hypergrad:
    """The result copied out of the static outputs (a later replay overwrites them)."""
    info = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in hg.info.items()}
    return Hypergrad(
        grad={k: v.clone() for k, v in hg.grad.items()},
        inner={k: v.clone() for k, v in hg.inner.items()},
        info={"seconds": seconds, **info},
    )


class Graphed:
    """The callable `graphed` returns: ``hg(outer, *, inner_init=None, inner_data=None, outer_data=None,
    check=True) -> Hypergrad`` (see the module docstring); ``captured``: whether a CUDA graph is in use."""

    def __init__(
        self,
        solver: Solver,
        problem: BilevelProblem,
        inner_init: Params,
        outer: Params,
        inner_data: Any = None,
        outer_data: Any = None,
        *,
        warmup: int = 3,
    ) -> None:
        self.solver = as_solver(solver)
        reason = self.solver.capture_problem()
        if reason is not None:
            raise ValueError(f"graphed(): cannot capture this solver: {reason}")
        validate_call(problem, inner_init, outer)
        self.problem = problem
        self.warmup = positive_int(warmup, "warmup", allow_zero=True)
        self._caller_outer = dict(outer)  # keeps the ids below valid
        self._aliases = {id(v): k for k, v in outer.items()}
        self._outer = {k: v.detach().clone() for k, v in outer.items()}
        # an inner_init entry that *is* an outer tensor (MAML) stays that outer entry's static buffer
        self._init_alias = {k: self._aliases[id(v)] for k, v in inner_init.items() if id(v) in self._aliases}
        self._inner_init = {k: v.detach().clone() for k, v in inner_init.items() if k not in self._init_alias}
        self._keys = list(inner_init)
        self._inner_data = _static_batches(inner_data, "inner_data")
        self._outer_data = _static_batches(outer_data, "outer_data")
        self.device = next(iter(self._outer.values())).device
        self._graph: Any = None
        self._out: tuple[Hypergrad, dict[str, Tensor]] | None = None
        self._monitor: Monitor | None = None
        self.codes: dict[str, Tensor] = {}

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(
        self,
        outer: Params,
        *,
        inner_init: Params | None = None,
        inner_data: Any = None,
        outer_data: Any = None,
        check: bool = True,
    ) -> Hypergrad:
        """∇F at ``outer`` (new values of the captured shapes); ``inner_init``, ``inner_data`` and
        ``outer_data`` replace the captured ones when given. ``check=False`` skips reading the failure flags
        (no host synchronisation at all; call `raise_if_failed` later, before the next call)."""
        _fill_params(self._outer, outer, "outer")
        if inner_init is not None:
            own = {k: v for k, v in inner_init.items() if k not in self._init_alias}
            _fill_params(self._inner_init, own, "inner_init")
        if inner_data is not None:
            _fill_batches(self._inner_data, inner_data, "inner_data")
        if outer_data is not None:
            _fill_batches(self._outer_data, outer_data, "outer_data")
        start = time.perf_counter()
        hg, codes = self._replay() if self.device.type == "cuda" else self._run()
        result = _clone_result(hg, 0.0)
        self.codes = {k: v.clone() for k, v in codes.items()}
        if check:
            self.raise_if_failed()
        result.info["seconds"] = time.perf_counter() - start
        return result

    def raise_if_failed(self) -> None:
        """Read the last call's failure flags (one host synchronisation) and raise or warn as the eager call
        would have."""
        assert self._monitor is not None
        self._monitor.raise_if_failed(self.codes)

    def _run(self) -> tuple[Hypergrad, dict[str, Tensor]]:
        """The capturable call on the static buffers."""
        inner_init = {
            k: (self._outer[self._init_alias[k]] if k in self._init_alias else self._inner_init[k])
            for k in self._keys
        }
        hg, monitor = self.solver.hypergrad_capturable(
            self.problem,
            inner_init,
            self._outer,
            self._inner_data,
            self._outer_data,
            outer_aliases=self._aliases,
        )
        self._monitor = monitor
        return hg, monitor.failure_codes()

    def _replay(self) -> tuple[Hypergrad, dict[str, Tensor]]:
        if self._graph is None:
            self._capture()
        self._graph.replay()
        assert self._out is not None
        return self._out

    def _capture(self) -> None:
        """Warm up on a side stream (allocator and autograd caches), then capture one call."""
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._out = self._run()
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GraphCaptureError(
                f"graphed(): the CUDA graph capture failed ({first}): something in the losses or the data "
                "synchronises with the host (.item(), float(), a Python branch on a tensor value, a CPU "
                "tensor used on the GPU); run this hypergradient eagerly (graph=False / --no-graph)"
            ) from exc
        self._graph = graph


def graphed(
    solver: Solver, problem: BilevelProblem, inner_init: Params, outer: Params, *args: Any, **kw: Any
):
    """``hg = graphed(solver, problem, inner_init, outer, inner_data=None, outer_data=None, *, warmup=3)``;
    ``hg(outer) -> Hypergrad``: see the module docstring. ``inner_data``/``outer_data``: None or a list of
    one call's batches (``solver.batches_per_call`` inner batches; a shorter list cycles, as eagerly)."""
    return Graphed(solver, problem, inner_init, outer, *args, **kw)


def shape_key(*trees: Any) -> tuple:
    """The (shape, dtype, device) of every tensor leaf of ``trees``: which static buffers a call needs."""
    leaves = pytree.tree_leaves(trees)
    return tuple((tuple(x.shape), x.dtype, str(x.device)) if isinstance(x, Tensor) else x for x in leaves)


def info_floats(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with its 0-dim tensors read as Python numbers (bools stay bools)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, Tensor) and v.numel() == 1:
            out[k] = bool(v) if v.dtype == torch.bool else float(v)
        else:
            out[k] = v
    return out
