"""Differentiable functional optimizers over parameter dicts (``dict[str, Tensor]``).

Each optimizer is a small frozen object with two pure functions (the Optax shape)::

    opt = optim.Adam(lr=1e-3)
    state = opt.init(params)                         # {"t": 0, "exp_avg": {...}, "exp_avg_sq": {...}}
    params, state = opt.step(params, grads, state)   # new dicts; the inputs are never modified

``state`` is a plain dict: ``"t"`` is the number of steps taken so far (a Python ``int``) and every other
entry is a dict shaped like ``params`` (named as in ``torch.optim``'s per-parameter state).

**Differentiable.** Every update is written with ordinary out-of-place torch ops, so reverse-mode autograd
(``torch.autograd.grad``, ``.backward()``) and the ``torch.func`` transforms (``grad``, ``vjp``, ``jvp``,
``jacrev``) flow through any number of steps: with respect to the initial parameters, to anything the
gradients depend on (the outer variable of a bi-level problem), and to the hyper-parameters. Hyper-parameters
(``lr``, ``momentum``, ``dampening``, ``betas``, ``eps``, ``weight_decay``) may be Python numbers or 0-dim
floating tensors that require grad, e.g. ``lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)``.

**Equal to torch.optim.** The trajectories of ``SGD``, ``Adam`` and ``AdamW`` equal those of ``torch.optim``
(same formulas, same order of operations; tested in float64 over 50 steps to rtol 1e-10). One difference
is deliberate: where ``torch.optim`` skips a parameter whose ``.grad`` is ``None``, ``step`` needs a gradient
for every parameter; pass zeros for unused ones (``torch.func.grad`` already does).

**No hidden checks.** ``step`` does not look for NaN or Inf in ``grads`` (that would cost a device
synchronisation per step): non-finite gradients propagate into the parameters and the state. The
hypergradient solvers check; users of the bare optimizers can call ``bilevel.tree.check_finite``.

Add your own optimizer by subclassing `Optimizer` (or by writing any object with ``init`` and ``step`` of
the same signatures; it then passes ``isinstance(obj, Optimizer)``).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from bilevel.monitor import is_capturing
from bilevel.tree import Params

State = dict[str, Any]
Hyper = float | Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "SignSGD", "State"]


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _hyper(
    cls: str,
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> Hyper:
    """Validate one hyper-parameter: a real number, or a 0-dim floating tensor (kept as is, graph included).

    The range check reads a tensor's value with ``float(value.detach())``; inside a transform where that is
    impossible (e.g. ``torch.func.vmap``) the check is skipped.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(
            f"{cls}: {name} must be a float or a 0-dim floating tensor, got {type(value).__name__}"
        )
    if isinstance(value, Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise TypeError(
                f"{cls}: {name} must be a 0-dim floating tensor, got shape {tuple(value.shape)} and dtype "
                f"{value.dtype}; use e.g. torch.tensor(0.1, dtype=torch.float64, requires_grad=True)"
            )
        if is_capturing():  # no host read inside a captured call (the value was checked when first built)
            return value
        try:
            x = float(value.detach())
        except RuntimeError:  # batched under vmap: the value is not a single number, skip the range check
            return value
    else:
        x = float(value)
        value = x
    lo_ok = x > low if low_open else x >= low
    hi_ok = x < high if high_open else x <= high
    if not math.isfinite(x) or not (lo_ok and hi_ok):
        lo_b = "(" if low_open else "["
        hi_b = ")" if high_open or high == math.inf else "]"
        raise ValueError(f"{cls}: {name} must lie in {lo_b}{low:g}, {high:g}{hi_b}, got {x!r}")
    return value


def _value(h: Hyper) -> float | None:
    """The value of a hyper-parameter as a float, or None where it cannot be read (batched under vmap)."""
    if not isinstance(h, Tensor):
        return h
    if is_capturing():
        return None
    try:
        return float(h.detach())
    except RuntimeError:
        return None


def _is_zero(value: Hyper) -> bool:
    """True only for a Python number equal to 0: a tensor hyper-parameter always keeps its term, so that the
    derivative with respect to it exists even at 0."""
    return not isinstance(value, Tensor) and value == 0.0


def _check_grads(params: Params, grads: Params, cls: str) -> None:
    if grads.keys() != params.keys():
        missing = sorted(params.keys() - grads.keys())
        extra = sorted(grads.keys() - params.keys())
        raise ValueError(
            f"{cls}.step: grads must have the same keys as params; missing {missing}, unexpected {extra}"
        )


def _no_grad_error(cls: str, key: str) -> ValueError:
    return ValueError(
        f"{cls}.step: grads[{key!r}] is None; pass zeros for parameters the loss does not use "
        f"(torch.func.grad does; with torch.autograd.grad use materialize_grads=True)"
    )


def _safe_sqrt(v: Tensor) -> Tensor:
    """√v with a finite derivative at v = 0.

    Computes √max(v, τ) with τ = ``torch.finfo(v.dtype).tiny``. The derivative at v = 0 (an entry whose
    gradients have all been exactly 0) is therefore 0 instead of ∞ (whose product with the zero derivative of
    v = Σ(1-β₂)β₂ʲ g² would be NaN). The value differs from √v only when v < τ, and then by at most √τ
    (1.5e-154 in float64, 1.1e-19 in float32), which vanishes in √v̂ + eps for any eps > 1e4·√τ.
    """
    return v.clamp_min(torch.finfo(v.dtype).tiny).sqrt()


# --------------------------------------------------------------------------------------------------------
# base
# --------------------------------------------------------------------------------------------------------


class Optimizer(abc.ABC):
    """Protocol of a functional optimizer: ``init(params) -> state`` and ``step(params, grads, state)``.

    ``step`` must be pure (return new dicts, never modify its inputs) and, to be usable by the unrolled
    solvers, built from differentiable torch ops. Any object with callable ``init`` and ``step`` counts as an
    `Optimizer` for ``isinstance``; subclasses that are dataclasses get `hyperparameters` for free.
    """

    @abc.abstractmethod
    def init(self, params: Params) -> State:
        """The initial state for ``params`` (``{"t": 0, ...}``)."""

    @abc.abstractmethod
    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        """One update: returns ``(new_params, new_state)``."""

    def hyperparameters(self) -> dict[str, Any]:
        """The hyper-parameters as given (floats or tensors), by name."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        if cls is Optimizer:
            has = all(callable(getattr(other, m, None)) for m in ("init", "step"))
            return True if has else NotImplemented
        return NotImplemented


# --------------------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SGD(Optimizer):
    r"""SGD with momentum, dampening, Nesterov and L2 weight decay, as torch.optim.SGD.

    With step counter t = 1, 2, …, gradient g_t, hyper-parameters η = ``lr``, μ = ``momentum``,
    τ = ``dampening``, λ = ``weight_decay``::

        g_t ← g_t + λ θ_{t-1}                                   (if λ ≠ 0)
        b_t = g_t                   if t = 1                     (if μ ≠ 0; as torch, no dampening at t = 1)
        b_t = μ b_{t-1} + (1 - τ) g_t   otherwise
        d_t = g_t + μ b_t  if nesterov  else  b_t                (d_t = g_t if μ = 0)
        θ_t = θ_{t-1} - η d_t

    Everything is linear in g, so the derivative through a step is exact; d/dη, d/dμ, d/dτ, d/dλ exist when
    those are tensors. State: ``{"t", "momentum_buffer"}`` (the buffer only when μ is not the number 0).
    """

    lr: Hyper
    momentum: Hyper = 0.0
    dampening: Hyper = 0.0
    nesterov: bool = False
    weight_decay: Hyper = 0.0

    def __post_init__(self) -> None:
        n = "SGD"
        object.__setattr__(self, "lr", _hyper(n, "lr", self.lr, low=0.0, low_open=True))
        object.__setattr__(
            self, "momentum", _hyper(n, "momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        )
        object.__setattr__(self, "dampening", _hyper(n, "dampening", self.dampening, low=0.0, high=1.0))
        object.__setattr__(self, "weight_decay", _hyper(n, "weight_decay", self.weight_decay, low=0.0))
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"SGD: nesterov must be a bool, got {type(self.nesterov).__name__}")
        if self.nesterov:
            m_val, d_val = _value(self.momentum), _value(self.dampening)
            if (m_val is not None and m_val <= 0) or (d_val is not None and d_val != 0):
                raise ValueError(
                    f"SGD: nesterov=True needs momentum > 0 and dampening = 0, got momentum={m_val}, "
                    f"dampening={d_val}"
                )

    def init(self, params: Params) -> State:
        if _is_zero(self.momentum):
            return {"t": 0}
        return {"t": 0, "momentum_buffer": {k: torch.zeros_like(v) for k, v in params.items()}}

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        _check_grads(params, grads, "SGD")
        lr, mu, tau, wd = self.lr, self.momentum, self.dampening, self.weight_decay
        if not isinstance(lr, Tensor) and _is_zero(mu) and _is_zero(wd):  # plain SGD: the hot path
            new: Params = {}
            for k, p in params.items():
                g = grads[k]
                if g is None:
                    raise _no_grad_error("SGD", k)
                new[k] = torch.add(p, g, alpha=-lr)
            return new, {"t": state["t"] + 1}
        t = state["t"]
        use_mom = not _is_zero(mu)
        first = t == 0
        lr_t = isinstance(lr, Tensor)
        old_bufs = state["momentum_buffer"] if use_mom else None
        new_params: Params = {}
        new_bufs: Params = {}
        for k, p in params.items():
            g = grads[k]
            if g is None:
                raise _no_grad_error("SGD", k)
            if not _is_zero(wd):
                g = g + wd * p if isinstance(wd, Tensor) else torch.add(g, p, alpha=wd)
            if use_mom:
                if first:
                    b = g
                elif isinstance(mu, Tensor) or isinstance(tau, Tensor):
                    b = old_bufs[k] * mu + (1 - tau) * g
                else:  # torch: buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    b = torch.add(old_bufs[k] * mu, g, alpha=1 - tau)
                new_bufs[k] = b
                if self.nesterov:
                    g = g + mu * b if isinstance(mu, Tensor) else torch.add(g, b, alpha=mu)
                else:
                    g = b
            # One op per tensor. torch._foreach_add over all tensors was measured slower for the unrolled
            # solvers (about 6% on the T = 20 MLP unroll, CPU): its multi-output autograd node costs more to
            # evaluate, in every create_graph step and in the reverse pass, than one AddBackward per tensor.
            new_params[k] = p - lr * g if lr_t else torch.add(p, g, alpha=-lr)
        new_state: State = {"t": t + 1}
        if use_mom:
            new_state["momentum_buffer"] = new_bufs
        return new_params, new_state


# --------------------------------------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------------------------------------


def _adam_step(
    opt: Adam | AdamW,
    name: str,
    decoupled: bool,
    params: Params,
    grads: Params,
    state: State,
) -> tuple[Params, State]:
    _check_grads(params, grads, name)
    lr, (b1, b2), eps, wd = opt.lr, opt.betas, opt.eps, opt.weight_decay
    t = state["t"] + 1
    amsgrad = opt.amsgrad
    # scalars of this step: bias corrections and the step size η / (1 - β₁ᵗ)
    bc1 = 1 - b1**t
    bc2 = 1 - b2**t
    bc2_sqrt = bc2.sqrt() if isinstance(bc2, Tensor) else bc2**0.5
    step_size = lr / bc1
    scalar_path = not any(isinstance(h, Tensor) for h in (lr, b1, b2, eps, wd))
    use_wd = not _is_zero(wd)
    if decoupled and use_wd:
        decay = 1 - lr * wd
    m_old, v_old = state["exp_avg"], state["exp_avg_sq"]
    vmax_old = state["max_exp_avg_sq"] if amsgrad else None
    new_p: Params = {}
    new_m: Params = {}
    new_v: Params = {}
    new_vmax: Params = {}
    for k, p in params.items():
        g = grads[k]
        if g is None:
            raise _no_grad_error(name, k)
        if use_wd:
            if decoupled:
                p = p * decay
            elif isinstance(wd, Tensor):
                g = g + wd * p
            else:
                g = torch.add(g, p, alpha=wd)
        if scalar_path:
            m = torch.lerp(m_old[k], g, 1 - b1)
            v = torch.addcmul(v_old[k] * b2, g, g, value=1 - b2)
        else:
            m = m_old[k] + (1 - b1) * (g - m_old[k])
            v = v_old[k] * b2 + (1 - b2) * (g * g)
        new_m[k] = m
        new_v[k] = v
        if amsgrad:
            v = v if t == 1 else torch.maximum(vmax_old[k], v)
            new_vmax[k] = v
        denom = _safe_sqrt(v) / bc2_sqrt + eps
        if scalar_path:
            new_p[k] = torch.addcdiv(p, m, denom, value=-step_size)
        else:
            new_p[k] = p - step_size * (m / denom)
    new_state: State = {"t": t, "exp_avg": new_m, "exp_avg_sq": new_v}
    if amsgrad:
        new_state["max_exp_avg_sq"] = new_vmax
    return new_p, new_state


def _adam_init(params: Params, amsgrad: bool) -> State:
    state: State = {
        "t": 0,
        "exp_avg": {k: torch.zeros_like(v) for k, v in params.items()},
        "exp_avg_sq": {k: torch.zeros_like(v) for k, v in params.items()},
    }
    if amsgrad:
        state["max_exp_avg_sq"] = {k: torch.zeros_like(v) for k, v in params.items()}
    return state


def _adam_validate(opt: Adam | AdamW, name: str) -> None:
    object.__setattr__(opt, "lr", _hyper(name, "lr", opt.lr, low=0.0, low_open=True))
    betas = opt.betas
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    b1 = _hyper(name, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
    b2 = _hyper(name, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    object.__setattr__(opt, "betas", (b1, b2))
    object.__setattr__(opt, "eps", _hyper(name, "eps", opt.eps, low=0.0, low_open=True))
    object.__setattr__(opt, "weight_decay", _hyper(name, "weight_decay", opt.weight_decay, low=0.0))
    if not isinstance(opt.amsgrad, bool):
        raise TypeError(f"{name}: amsgrad must be a bool, got {type(opt.amsgrad).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as torch.optim.Adam.

    With t = 1, 2, …, η = ``lr``, (β₁, β₂) = ``betas``, ε = ``eps``, λ = ``weight_decay``::

        g_t ← g_t + λ θ_{t-1}                               (if λ ≠ 0: L2, coupled)
        m_t = β₁ m_{t-1} + (1 - β₁) g_t                     (computed as lerp(m_{t-1}, g_t, 1 - β₁))
        v_t = β₂ v_{t-1} + (1 - β₂) g_t²
        v̄_t = max(v̄_{t-1}, v_t)  if amsgrad  else  v_t
        θ_t = θ_{t-1} - η/(1 - β₁ᵗ) · m_t / (√v̄_t / √(1 - β₂ᵗ) + ε)

    i.e. θ ← θ - η m̂/(√v̂ + ε) with the bias corrections m̂ = m/(1-β₁ᵗ), v̂ = v/(1-β₂ᵗ), ε added *after*
    the correction (higher 0.2.1 adds it before and so does not match torch.optim).

    Non-differentiable points: √· at v = 0 (an entry whose gradients were all exactly 0) gets derivative 0
    rather than ∞, so backward and forward mode stay finite, and the derivative of the step with respect to
    g there is the true one, η(1-β₁)/((1-β₁ᵗ)ε). amsgrad's max(v̄_{t-1}, v_t) uses ``torch.maximum``,
    which splits the derivative equally at ties (a valid generalized derivative); at t = 1, v̄_1 = v_1.
    State: ``{"t", "exp_avg", "exp_avg_sq"}`` (+ ``"max_exp_avg_sq"`` with amsgrad).
    """

    lr: Hyper = 1e-3
    betas: tuple[Hyper, Hyper] = (0.9, 0.999)
    eps: Hyper = 1e-8
    weight_decay: Hyper = 0.0
    amsgrad: bool = False

    def __post_init__(self) -> None:
        _adam_validate(self, "Adam")

    def init(self, params: Params) -> State:
        return _adam_init(params, self.amsgrad)

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        return _adam_step(self, "Adam", False, params, grads, state)


@dataclasses.dataclass(frozen=True, eq=False)
class AdamW(Optimizer):
    r"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, as torch.optim.AdamW.

    Same as `Adam` except that the decay multiplies the parameters instead of entering the gradient::

        θ' = θ_{t-1} (1 - η λ)
        m_t, v_t, v̄_t as in Adam with the raw gradient g_t
        θ_t = θ' - η/(1 - β₁ᵗ) · m_t / (√v̄_t / √(1 - β₂ᵗ) + ε)

    Default ``weight_decay=1e-2`` as torch. Same non-differentiable-point handling and state as `Adam`.
    """

    lr: Hyper = 1e-3
    betas: tuple[Hyper, Hyper] = (0.9, 0.999)
    eps: Hyper = 1e-8
    weight_decay: Hyper = 1e-2
    amsgrad: bool = False

    def __post_init__(self) -> None:
        _adam_validate(self, "AdamW")

    def init(self, params: Params) -> State:
        return _adam_init(params, self.amsgrad)

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        return _adam_step(self, "AdamW", True, params, grads, state)


# --------------------------------------------------------------------------------------------------------
# SignSGD
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SignSGD(Optimizer):
    r"""Sign gradient descent: θ_t = θ_{t-1} - η · sign(g_t)  (sign(0) = 0).

    The derivative of sign is 0 almost everywhere (and taken as 0 at 0), so through T steps
    ∂θ_T/∂θ_0 = I, ∂θ_T/∂(anything g depends on) = 0 and ∂θ_T/∂η = -Σ_t sign(g_t). Unrolling it therefore
    gives exactly the *partial* hypergradient ∂f/∂λ: this is the lower level of the worst-case forget-set
    paper (Fan et al. 2024, its code's ``SignSGD.sign_step``; no momentum, no weight decay), whose
    "unrolled" hypergradient is first-order for this reason. Use it to reproduce that rule, not for
    hypergradients that need the implicit term. State: ``{"t"}``.
    """

    lr: Hyper

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _hyper("SignSGD", "lr", self.lr, low=0.0, low_open=True))

    def init(self, params: Params) -> State:
        return {"t": 0}

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        _check_grads(params, grads, "SignSGD")
        lr = self.lr
        lr_t = isinstance(lr, Tensor)
        new_p: Params = {}
        for k, p in params.items():
            g = grads[k]
            if g is None:
                raise _no_grad_error("SignSGD", k)
            s = torch.sign(g)
            new_p[k] = p - lr * s if lr_t else torch.add(p, s, alpha=-lr)
        return new_p, {"t": state["t"] + 1}
