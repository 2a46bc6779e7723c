"""The checks of one hypergradient call: finiteness and runaway growth, raised at once or kept on the device.

A diverging inner run need not overflow: SGD with a step size far above 2/L multiplies the iterate by a
constant factor per step, and 50 steps of it stay finite while the hypergradient reaches 1e236. Besides
NaN/Inf, a call therefore checks that the inner iterate stays bounded relative to where it started,

    ‖θ_t‖ ≤ max_growth · max(1, ‖θ_0‖)         (max_growth = 1e10 by default),

and a violation raises ``FloatingPointError`` naming the step (or warns, with ``on_divergence="warn"``).

An eager `Monitor` raises at the check itself (each check reads a value on the host). A deferred one, used by
the capturable path (`bilevel.graphed`), performs no host synchronisation: each check folds a boolean into a
device-side code, c ← c if c ≠ 0 else (i if bad else 0), where i numbers the check's message;
`raise_if_failed` reads the codes once, after the call, and raises (or warns) with the first failing
check's message.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from . import tree
from .tree import Params, check_finite
from .validate import number, one_of

ON_DIVERGENCE = ("raise", "warn")
MAX_GROWTH = 1e10
_CAPTURING: contextvars.ContextVar[bool] = contextvars.ContextVar("bilevel_capturing", default=False)


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Within this block the library reads no tensor value on the host: range checks of tensor
    hyper-parameters (a learned learning rate rebuilt from the outer variable) are skipped."""
    token = _CAPTURING.set(True)
    try:
        yield
    finally:
        _CAPTURING.reset(token)


def is_capturing() -> bool:
    """Whether the code runs inside `capturing` (the capturable path of `bilevel.graphed`)."""
    return _CAPTURING.get()


def check_divergence_options(on_divergence: Any, max_growth: Any) -> tuple[str, float]:
    """Validated (``on_divergence``, ``max_growth``) of a solver: "raise" or "warn", and a number > 1."""
    one_of(on_divergence, "on_divergence", ON_DIVERGENCE)
    growth = float(number(max_growth, "max_growth"))
    if growth <= 1:
        raise ValueError(f"max_growth must be > 1 (a growth factor of the inner iterate), got {max_growth!r}")
    return on_divergence, growth


class Monitor:
    """Finiteness and growth checks of one call; ``deferred=True`` keeps them as device-side flags."""

    def __init__(
        self, *, deferred: bool = False, on_divergence: str = "raise", max_growth: float = MAX_GROWTH
    ):
        self.deferred = deferred
        self.on_divergence = on_divergence
        self.max_growth = max_growth
        self.messages: list[tuple[type[Exception], str]] = [(FloatingPointError, "")]  # code 0: no failure
        self.codes: dict[str, Tensor] = {}  # "error" and "growth": the first failing check's number

    def finite(self, value: Params | Tensor, where: str) -> None:
        """NaN/Inf in ``value`` is an error naming ``where`` (eager: `bilevel.tree.check_finite`'s text)."""
        if not self.deferred:
            check_finite(value, where)
            return
        values = list(value.values()) if isinstance(value, dict) else [value]
        if not values:
            return
        ok = torch.stack([torch.isfinite(v).all() for v in values]).all()
        self.require(ok, f"NaN or Inf in {where}; check the losses and step sizes")

    def require(self, ok: Tensor, message: str, error: type[Exception] = FloatingPointError) -> None:
        """A deferred condition: ``error(message)`` is raised after the call where ``ok`` (a 0-dim bool
        tensor) is False. Only for a deferred monitor."""
        self._flag("error", ~ok, message, error)

    def bounded(self, value: Params, start_norm: Tensor, where: str) -> None:
        """‖value‖ ≤ max_growth · max(1, ``start_norm``), else runaway growth of ``where``."""
        size = tree.norm(tree.detach(value))
        limit = start_norm.detach().clamp_min(1.0) * self.max_growth
        if not self.deferred:
            got, lim = float(size), float(limit)
            if got > lim:
                self._diverged(self._growth_message(where, f"{got:.3g}", f"{lim / self.max_growth:.3g}"))
            return
        self._flag("growth", size > limit, self._growth_message(where, "", ""), FloatingPointError)

    def _growth_message(self, where: str, got: str, start: str) -> str:
        size = f" to norm {got}" if got else ""
        ref = f" = {start}" if start else ""
        return (
            f"runaway growth: {where} grew{size}, more than {self.max_growth:g} x max(1, ‖θ_0‖{ref}); the "
            "inner optimizer diverges (its step size is too large for the loss's curvature): lower the "
            "learning rate, or pass on_divergence='warn' (or a larger max_growth) to the solver"
        )

    def _diverged(self, message: str) -> None:
        if self.on_divergence == "warn":
            warnings.warn(message, RuntimeWarning, stacklevel=4)
        else:
            raise FloatingPointError(message)

    def _flag(self, kind: str, bad: Tensor, message: str, error: type[Exception]) -> None:
        self.messages.append((error, message))
        number_ = len(self.messages) - 1
        code = self.codes.get(kind)
        if code is None:
            code = torch.zeros((), dtype=torch.int64, device=bad.device)
        self.codes[kind] = torch.where((code == 0) & bad, number_, code)

    def failure_codes(self) -> dict[str, Tensor]:
        """The device-side codes (0 = no failure); empty for an eager monitor or one that checked nothing."""
        return dict(self.codes)

    def raise_if_failed(self, codes: dict[str, Tensor] | None = None) -> None:
        """Read the deferred codes (one host synchronisation) and raise the first failure: NaN/Inf (and the
        other `require` conditions) always, growth as an error or a warning (``on_divergence``)."""
        codes = self.codes if codes is None else codes
        error = codes.get("error")
        if error is not None and int(error) != 0:
            cls, message = self.messages[int(error)]
            raise cls(message)
        growth = codes.get("growth")
        if growth is not None and int(growth) != 0:
            self._diverged(self.messages[int(growth)][1])
