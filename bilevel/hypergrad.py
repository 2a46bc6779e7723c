"""What every hypergradient solver returns, and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .problem import BilevelProblem
from .tree import Params, as_params


@dataclass(frozen=True)
class Hypergrad:
    """A hypergradient ∇F(λ) = d f(θ*(λ), λ) / dλ and how it was obtained.

    ``grad``: dict shaped like ``outer``. ``inner``: the inner solution θ the hypergradient was evaluated at
    (detached). ``info``: diagnostics; every solver reports ``seconds``, ``outer_loss`` (f at the returned
    inner solution), ``inner_grad_norm`` (‖∇_θ g‖ there) and ``hvp_count``; implicit solvers add the
    linear-solve ``residual`` (relative) and ``iterations``.
    """

    grad: Params
    inner: Params
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """f(θ, λ) at the returned inner solution."""
        return float(self.info["outer_loss"])


def validate_call(problem: BilevelProblem, inner_init: Params, outer: Params) -> None:
    """Shared argument checks of ``Solver.hypergrad``."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem(inner_loss, outer_loss), got {type(problem).__name__}"
        )
    as_params(inner_init, "inner_init")
    as_params(outer, "outer")
    for k, v in inner_init.items():
        if not v.is_floating_point():
            raise TypeError(f"inner_init[{k!r}] must be a floating-point tensor, got {v.dtype}")
    for k, v in outer.items():
        if not v.is_floating_point():
            raise TypeError(f"outer[{k!r}] must be a floating-point tensor, got {v.dtype}")


def check_scalar(value: Tensor, name: str) -> Tensor:
    """A loss must return a real scalar tensor."""
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}")
    return value.reshape(())


def positive_int(value: int, name: str, *, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value
