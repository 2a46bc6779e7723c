"""Using an ``nn.Module`` inside a bi-level problem, and what happens to its buffers.

`FunctionalModule` turns a module into a pure function ``fm(params, x)`` of a parameter dict (built on
``torch.func.functional_call``) with one explicit policy for buffers such as BatchNorm running statistics:

- ``buffers="frozen"``: every call runs in eval mode with the buffers as they were when the
  ``FunctionalModule`` was made (BatchNorm normalises with its running statistics). Nothing is ever updated.
  The inner and outer losses are then deterministic functions of the parameters: the right choice for
  implicit differentiation and for `check_hypergrad`.
- ``buffers="frozen"`` on a module whose BatchNorm statistics were never updated (a freshly built net) warns:
  it would normalise with mean 0 and variance 1.
- ``buffers="track"``: calls run in train mode (BatchNorm normalises with batch statistics) and the running
  statistics are threaded as state: the inner optimisation steps of a solver (and only those: not the
  Hessian-vector products, the outer loss, nor the recomputation of a checkpointed unroll) update
  ``fm.buffers``, by value and detached. The running statistics never influence a train-mode output, so they
  carry no gradient; they are kept so that the inner solution can be evaluated in eval mode afterwards
  (``fm(params, x, train=False)``) — the statistics higher discards and torchopt restores by reference.
  Across solver calls the statistics accumulate until ``fm.reset()``; ``carry_over`` makes that explicit:
  ``None`` (default) warns once when a call continues from an earlier call's statistics, ``False`` resets
  them at the start of each call, ``True`` carries them over silently.

In both policies the user's module is never modified: ``FunctionalModule`` keeps its own copy of the module
structure and of the buffers (snapshot by value). ``write_back(module)`` copies the current buffers into a
module when the user asks. Every call clones the buffers it passes to ``functional_call``, so BatchNorm's
in-place update never touches a tensor captured by a ``torch.func`` transform.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .tree import Params

POLICIES = ("frozen", "track")
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("bilevel_recording_buffers", default=False)
# The solver call (one hypergrad or solve_inner) in progress: a fresh token per call, so that a "track"
# module can tell that its running statistics come from an earlier call.
_CALL: contextvars.ContextVar[object | None] = contextvars.ContextVar("bilevel_solver_call", default=None)


@contextlib.contextmanager
def solver_call() -> Iterator[None]:
    """Mark one solver call (``Solver.hypergrad``, ``solve_inner``); nested calls keep the outer token."""
    if _CALL.get() is not None:
        yield
        return
    token = _CALL.set(object())
    try:
        yield
    finally:
        _CALL.reset(token)


def _never_updated(module: nn.Module) -> list[str]:
    """Names of the normalisation layers whose running statistics were never updated (0 batches tracked)."""
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(getattr(sub, "num_batches_tracked", None), Tensor)
        and getattr(sub, "running_mean", None) is not None
        and int(sub.num_batches_tracked) == 0
    ]


@contextlib.contextmanager
def recording_buffers(enabled: bool = True) -> Iterator[None]:
    """Within this block, ``buffers="track"`` modules store their updated running statistics. The solvers
    open it around each inner optimisation step."""
    token = _RECORDING.set(enabled)
    try:
        yield
    finally:
        _RECORDING.reset(token)


class FunctionalModule:
    """``fm(params, *args, train=None, **kwargs)`` = ``module(*args)`` with parameters ``params`` and the
    buffer policy described in the module docstring. ``train=None`` follows the policy (frozen → eval,
    track → train); ``train=False`` in "track" mode evaluates with the current running statistics."""

    def __init__(self, module: nn.Module, buffers: str = "frozen", *, carry_over: bool | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if buffers not in POLICIES:
            raise ValueError(f"buffers must be one of {POLICIES}, got {buffers!r}")
        if carry_over not in (None, True, False):
            raise ValueError(f"carry_over must be None, True or False, got {carry_over!r}")
        fresh = _never_updated(module)
        if buffers == "frozen" and fresh:
            warnings.warn(
                f"FunctionalModule(buffers='frozen'): the running statistics of {fresh} were never updated "
                "(num_batches_tracked = 0), so every call normalises with mean 0 and variance 1; train the "
                "module first, or use buffers='track'",
                UserWarning,
                stacklevel=2,
            )
        self.policy = buffers
        self.carry_over = carry_over
        self._last_call: object | None = None
        self._warned_carry = False
        self._module = copy.deepcopy(module)
        self._initial = {k: b.detach().clone() for k, b in module.named_buffers()}
        self.buffers: dict[str, Tensor] = {k: b.clone() for k, b in self._initial.items()}
        self.updates = 0

    def params(self, *, dtype: torch.dtype | None = None) -> Params:
        """A detached copy of the module's parameters (the usual ``inner_init``)."""
        return {k: p.detach().clone().to(dtype=dtype or p.dtype) for k, p in self._module.named_parameters()}

    def reset(self) -> None:
        """Back to the buffers the module had at construction."""
        self.buffers = {k: b.clone() for k, b in self._initial.items()}
        self.updates = 0

    def write_back(self, module: nn.Module) -> None:
        """Copy the current buffers into ``module`` (in place, under ``no_grad``): an explicit user action."""
        own = dict(module.named_buffers())
        missing = set(self.buffers) - set(own)
        if missing:
            raise KeyError(f"module lacks buffers {sorted(missing)}")
        with torch.no_grad():
            for k, v in self.buffers.items():
                own[k].copy_(v)

    def __call__(self, params: Params, *args: Any, train: bool | None = None, **kwargs: Any) -> Any:
        train_mode = (self.policy == "track") if train is None else bool(train)
        recording = train_mode and self.policy == "track" and _RECORDING.get()
        if recording:
            self._new_call_starts()
        dtype = next((p.dtype for p in params.values() if p.is_floating_point()), None)
        bufs = {
            k: (b.to(dtype=dtype, copy=True) if dtype is not None and b.is_floating_point() else b.clone())
            for k, b in self.buffers.items()
        }
        self._module.train(train_mode)
        out = functional_call(self._module, (params, bufs), args, kwargs, strict=False)
        if recording:
            self.buffers = {k: b.detach() for k, b in bufs.items()}
            self.updates += 1
        return out

    def _new_call_starts(self) -> None:
        """Before the first recorded update of a new solver call: with ``carry_over=False`` start again from
        the construction-time statistics; with None (default) warn once that they carry over."""
        call = _CALL.get()
        if call is self._last_call:
            return
        if self._last_call is not None and self.updates:
            if self.carry_over is False:
                self.reset()
            elif self.carry_over is None and not self._warned_carry:
                self._warned_carry = True
                warnings.warn(
                    f"FunctionalModule(buffers='track'): this call continues from running statistics "
                    f"updated {self.updates} times by earlier calls; call fm.reset() to start again, or "
                    "pass carry_over=False (reset at each call) or carry_over=True (silence this)",
                    UserWarning,
                    stacklevel=4,
                )
        self._last_call = call
