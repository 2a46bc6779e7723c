"""Using an ``nn.Module`` inside a bi-level problem, and what happens to its buffers.

`FunctionalModule` turns a module into a pure function ``fm(params, x)`` of a parameter dict (built on
``torch.func.functional_call``) with one explicit policy for buffers such as BatchNorm running statistics:

- ``buffers="frozen"``: every call runs in eval mode with the buffers as they were when the
  ``FunctionalModule`` was made (BatchNorm normalises with its running statistics). Nothing is ever updated.
  The inner and outer losses are then deterministic functions of the parameters: the right choice for
  implicit differentiation and for `check_hypergrad`.
- ``buffers="track"``: calls run in train mode (BatchNorm normalises with batch statistics) and the running
  statistics are threaded as state: the inner optimisation steps of a solver (and only those: not the
  Hessian-vector products, the outer loss, nor the recomputation of a checkpointed unroll) update
  ``fm.buffers``, by value and detached. The running statistics never influence a train-mode output, so they
  carry no gradient; they are kept so that the inner solution can be evaluated in eval mode afterwards
  (``fm(params, x, train=False)``) — the statistics higher discards and torchopt restores by reference.

In both policies the user's module is never modified: ``FunctionalModule`` keeps its own copy of the module
structure and of the buffers (snapshot by value). ``write_back(module)`` copies the current buffers into a
module when the user asks. Every call clones the buffers it passes to ``functional_call``, so BatchNorm's
in-place update never touches a tensor captured by a ``torch.func`` transform.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .tree import Params

POLICIES = ("frozen", "track")
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("bilevel_recording_buffers", default=False)


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

    def __init__(self, module: nn.Module, buffers: str = "frozen") -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if buffers not in POLICIES:
            raise ValueError(f"buffers must be one of {POLICIES}, got {buffers!r}")
        self.policy = buffers
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
        dtype = next((p.dtype for p in params.values() if p.is_floating_point()), None)
        bufs = {
            k: (b.to(dtype=dtype, copy=True) if dtype is not None and b.is_floating_point() else b.clone())
            for k, b in self.buffers.items()
        }
        self._module.train(train_mode)
        out = functional_call(self._module, (params, bufs), args, kwargs, strict=False)
        if train_mode and self.policy == "track" and _RECORDING.get():
            self.buffers = {k: b.detach() for k, b in bufs.items()}
            self.updates += 1
        return out
