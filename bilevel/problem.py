"""The bi-level problem and how data reaches its two losses.

    min_λ  F(λ) = f(θ*(λ), λ)      s.t.   θ*(λ) = argmin_θ g(θ, λ)

``inner_loss`` is g and ``outer_loss`` is f. Both are called as ``loss(inner, outer, batch) -> scalar`` with
``inner`` and ``outer`` dicts of tensors (the "parameter dicts" every function of this package works on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .tree import Params

Loss = Callable[[Params, Params, Any], Tensor]
# What a solver accepts as data: None (loss gets batch=None), an iterable of batches,
# or a callable step -> batch.
Data = None | Iterable[Any] | Callable[[int], Any]


@dataclass(frozen=True)
class BilevelProblem:
    """``inner_loss`` g(θ, λ, batch) and ``outer_loss`` f(θ, λ, batch), each returning a scalar tensor."""

    inner_loss: Loss
    outer_loss: Loss

    def __post_init__(self) -> None:
        for name in ("inner_loss", "outer_loss"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable as {name}(inner, outer, batch) -> scalar tensor")


def check_scalar(value: Tensor, name: str) -> Tensor:
    """A loss must return a real scalar tensor: ``value`` reshaped to ``()``, else a ``ValueError``."""
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}")
    # a 0-dim value is returned as is: a reshape would add a node to the graph of every unrolled step
    return value if value.dim() == 0 else value.reshape(())


class DataStream:
    """Turns a solver's ``*_data`` argument into ``batch(step)``.

    - ``None``: every step gets ``None`` (full-batch losses that close over their data);
    - a callable: ``batch(step) = data(step)``;
    - an iterable: consumed in order, restarted (``iter`` again) when exhausted, so a list or a DataLoader
      both cycle. Steps must be requested in increasing order for iterables; a step already passed raises.
    """

    def __init__(self, data: Data, name: str = "data") -> None:
        self.name = name
        self._data = data
        self._it: Iterator[Any] | None = None
        self._next_step = 0
        self._last: tuple[int, Any] | None = None
        if isinstance(data, (tuple, Tensor)):
            raise TypeError(
                f"{name} is a {type(data).__name__}, which would be read as a sequence of batches (its "
                f"elements); pass [batch] for one fixed batch, a list of batches, or a callable step -> batch"
            )
        self._yielded = 0
        if data is not None and not callable(data):
            try:
                iter(data)  # type: ignore[arg-type]
            except TypeError as exc:
                raise TypeError(
                    f"{name} must be None, an iterable of batches, or a callable step -> batch; "
                    f"got {type(data).__name__}"
                ) from exc

    @property
    def random_access(self) -> bool:
        """True when any step can be requested again (None or a callable), so nothing needs caching."""
        return self._data is None or (callable(self._data) and not hasattr(self._data, "__iter__"))

    def __call__(self, step: int) -> Any:
        data = self._data
        if data is None:
            return None
        if callable(data) and not hasattr(data, "__iter__"):
            return data(step)
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        if step < self._next_step:
            raise ValueError(f"{self.name}: batch for step {step} requested after step {self._next_step - 1}")
        while self._next_step <= step:
            batch = self._pull()
            self._last = (self._next_step, batch)
            self._next_step += 1
        return self._last[1]  # type: ignore[index]

    def _pull(self) -> Any:
        if self._it is None:
            self._it = iter(self._data)  # type: ignore[arg-type]
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = iter(self._data)  # type: ignore[arg-type]
            try:
                batch = next(self._it)
            except StopIteration as exc:
                if self._yielded:
                    raise ValueError(
                        f"{self.name} ran out after {self._yielded} batches and cannot be restarted (a "
                        "one-shot iterator or generator); pass a list or DataLoader, or a callable "
                        "step -> batch"
                    ) from exc
                raise ValueError(f"{self.name} is an empty iterable: it yields no batch") from exc
        self._yielded += 1
        return batch
