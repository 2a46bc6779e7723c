"""Weight saliency (SalUn, ICLR 2024): which weights matter for the forget set, and a wrapper that lets only
those move under any gradient-based unlearning method.

Saliency map (eval mode, at the original weights θ_o):

    G = Σ_batches ∇_θ [ −mean_b ℓ(θ; x, y) ]  over D_f,      S = |G|        (abs of the sum of batch means)
    m = 𝟙[S ranks in the top ⌊s·P⌋ of all P entries]                        (global; per tensor with
    per_layer)

1 = salient = trainable, 0 = frozen; s = ``sparsity`` is the fraction kept (0.5, the published default
``with_0.5.pt``). Ties are broken by position (stable sort), so exactly ⌊s·P⌋ entries are kept.

`Masked(method, mask)` applies a mask to the updates of ``method`` through the training loop's hooks:
``freeze="hard"`` (default) keeps every masked-out weight bit-identical (gradient masked before the step,
weight
restored and its momentum zeroed after it, so weight decay and momentum cannot move it: the paper's stated
θ_u = m ⊙ (θ_o + Δθ) + (1 − m) ⊙ θ_o, and the published code since PR #33); ``freeze="grad"`` only
multiplies the
gradient by m (the paper-era code: weight decay and momentum still move frozen weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.tree import Params
from bilevel.validate import Options
from unlearning.data_types import ArrayData, Task
from unlearning.methods.base import LowerContext, Method, Run, hparam

MaskFn = Callable[[nn.Module, Task], dict[str, Tensor]]


def gradient_saliency(model: nn.Module, forget: ArrayData, *, batch_size: int = 256) -> dict[str, Tensor]:
    """S = |Σ_batches ∇_θ(−mean_b ℓ)| over ``forget`` (unshuffled batches), per parameter; eval mode. The
    model
    is left as it was (mode restored, ``.grad`` untouched)."""
    if len(forget) == 0:
        raise ValueError("the forget set is empty: saliency needs at least one example")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    dev = params[0].device
    try:
        for x, y, _ in forget.batches(batch_size):
            loss = -F.cross_entropy(model(x.to(dev)), y.to(dev))
            for acc, g in zip(total, torch.autograd.grad(loss, params)):
                acc += g
    finally:
        model.train(was_training)
    return {n: g.abs() for n, g in zip(names, total)}


def top_fraction(scores: dict[str, Tensor], fraction: float, *, per_layer: bool = False) -> dict[str, Tensor]:
    """Boolean masks keeping the ⌊fraction·P⌋ highest scores (globally over all tensors, or per tensor);
    ties go to the earlier position (in key order, then flattened order)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"sparsity (the kept fraction) must be in [0, 1], got {fraction}")

    def keep(flat: Tensor) -> Tensor:
        k = int(fraction * flat.numel())
        order = torch.argsort(flat, descending=True, stable=True)
        out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        out[order[:k]] = True
        return out

    if per_layer:
        return {n: keep(s.reshape(-1)).reshape(s.shape) for n, s in scores.items()}
    flat = keep(torch.cat([s.reshape(-1) for s in scores.values()]))
    masks, start = {}, 0
    for n, s in scores.items():
        masks[n] = flat[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def saliency_mask(
    model: nn.Module,
    forget: ArrayData,
    *,
    sparsity: float = 0.5,
    per_layer: bool = False,
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """SalUn's weight-saliency mask: the top ``sparsity`` fraction of |Σ_batches ∇(−ℓ)| over D_f (see
    module)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity (the kept fraction) must be in [0, 1], got {sparsity}")
    return top_fraction(
        gradient_saliency(model, forget, batch_size=batch_size), sparsity, per_layer=per_layer
    )


def mask_fraction(mask: dict[str, Tensor]) -> float:
    """The fraction of entries that are 1 (salient, trainable)."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / max(total, 1)


def check_mask(model: nn.Module, mask: dict[str, Tensor]) -> dict[str, Tensor]:
    """Validate ``mask`` against ``model``'s parameters and return it as bool tensors on their devices.
    Parameters absent from the mask are not masked (as in the published code)."""
    if not isinstance(mask, dict):
        raise TypeError(f"a mask must be a dict of name -> tensor, got {type(mask).__name__}")
    params = dict(model.named_parameters())
    out = {}
    for name, m in mask.items():
        if name not in params:
            raise ValueError(
                f"mask entry {name!r} is not a parameter of the model (known: {', '.join(params)})"
            )
        if tuple(m.shape) != tuple(params[name].shape):
            raise ValueError(
                f"mask entry {name!r} has shape {tuple(m.shape)}, the parameter {tuple(params[name].shape)}"
            )
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask entry {name!r} must hold 0/1 or bool values")
        out[name] = m.to(device=params[name].device, dtype=torch.bool)
    return out


class MaskHook:
    """Loop hook: g ← g ⊙ m before each step; with ``freeze="hard"`` the masked-out entries of every weight
    are
    restored after the step and their momentum is zeroed, so they never change."""

    def __init__(self, mask: dict[str, Tensor], freeze: str = "hard", model: nn.Module | None = None) -> None:
        self.mask = mask
        self.freeze = freeze
        self._saved: dict[str, Tensor] = {}
        # The values the masked-out entries must keep: those of ``model`` when the hook is made (θ_o), so a
        # method that changes weights outside the optimizer (EU-k's re-initialisation) cannot move them.
        self._anchor: dict[str, Tensor] = {}
        if model is not None and freeze == "hard":
            self._anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in mask}

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._saved = {}
        for name, p in model.named_parameters():
            m = self.mask.get(name)
            if m is None:
                continue
            if p.grad is not None:
                p.grad.mul_(m.to(p.grad.dtype))
            if self.freeze == "hard":
                anchor = self._anchor.get(name)
                self._saved[name] = anchor if anchor is not None else p.detach().clone()

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.freeze != "hard":
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                saved = self._saved.get(name)
                if saved is None:
                    continue
                m = self.mask[name]
                p.copy_(torch.where(m, p, saved))
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(m.to(buf.dtype))
        self._saved = {}


@dataclass
class Masked(Method):
    """Any gradient-based ``method`` with its updates restricted to the weights where ``mask`` is 1.

    ``mask`` is a dict name → bool tensor, or a function ``(model, task) -> dict`` evaluated at the start of
    ``unlearn`` (its time counts in ``seconds``). IU applies it to its one-shot perturbation (α·k ⊙ m); BE and
    Retrain cannot take a mask (a clear error at construction).

    ``lower_loss`` = the wrapped method's lower_loss at θ̃ = m ⊙ θ + (1 − m) ⊙ θ_start (θ_start its initial
    state): the masked-out weights are held at their start, so their gradient is exactly 0.
    """

    method: Method = None  # type: ignore[assignment]
    mask: Any = None
    freeze: str = hparam(
        "hard", Options(("hard", "grad")), "hard: frozen weights never change; grad: mask gradients only"
    )

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):
            raise TypeError(f"Masked needs an unlearning Method to wrap, got {type(self.method).__name__}")
        if self.method.mask_unsupported:
            raise ValueError(
                f"{self.method.name} cannot take a saliency mask: {self.method.mask_unsupported}"
            )
        if not (isinstance(self.mask, dict) or callable(self.mask)):
            raise TypeError("mask must be a dict of name -> bool tensor or a function (model, task) -> dict")
        self.validate()

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"masked_{self.method.name}"

    def hparams(self) -> dict[str, Any]:
        return {**self.method.hparams(), "freeze": self.freeze}

    def resolve(self, model: nn.Module, task: Task) -> dict[str, Tensor]:
        mask = self.mask(model, task) if callable(self.mask) else self.mask
        return check_mask(model, mask)

    def _unlearn(self, model: nn.Module, task: Task, run: Run) -> tuple[nn.Module, dict]:
        mask = self.resolve(model, task)
        if run.mask is not None:
            mask = {n: mask.get(n, True) & run.mask.get(n, True) for n in {*mask, *run.mask}}
        inner = Run(hooks=(*run.hooks, MaskHook(mask, self.freeze, model)), mask=mask)
        out, info = self.method._unlearn(model, task, inner)
        return out, {**info, "mask_fraction": mask_fraction(mask), "freeze": self.freeze}

    def _bind(self, model: nn.Module, task: Task) -> LowerContext:
        mask = self.resolve(model, task)
        bound = self.method.bind(model, task)
        inner = bound._context()
        start, _ = bound.initial_state()
        extra = {"inner": bound, "mask": mask, "start": start}
        return dataclasses.replace(inner, extra=extra)

    def initial_state(self) -> tuple[Params, Params]:
        return self._context().extra["inner"].initial_state()

    def _lower_loss(
        self,
        ctx: LowerContext,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        weights: Tensor,
    ) -> Tensor:
        mask, start, bound = ctx.extra["mask"], ctx.extra["start"], ctx.extra["inner"]
        held = {
            n: torch.where(mask[n], p, start[n]) if n in mask and n in start else p for n, p in params.items()
        }
        return bound._lower_loss(bound._context(), held, buffers, x, y, index, weights)


__all__ = [
    "Masked",
    "MaskHook",
    "check_mask",
    "gradient_saliency",
    "mask_fraction",
    "saliency_mask",
    "top_fraction",
]
