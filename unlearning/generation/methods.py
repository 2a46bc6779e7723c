"""Unlearning methods for class-conditional diffusion models, behind one interface.

Each method is a dataclass of validated hyper-parameters (``make(name, **hp)``; the classifier side's
`unlearning.methods.base.Method` supplies ``hyperparameters()``, ``hparams()`` and ``validate()``) with

    unlearn(model: ConditionalDiffusion, task: GenerationTask) -> Unlearned(model, seconds, info)

run on a deep copy (the input is never mutated). ε_θ(x_t, t, c) is ``model(x_t, t, labels=c)``, x_t =
√ᾱ_t x₀ + √(1−ᾱ_t) ε (``diffusion.add_noise``), and the diffusion loss of a batch is
L(θ; x₀, c) = mean_b ‖ε − ε_θ(x_t, t, c)‖² (``diffusion.diffusion_loss``, antithetic t: t and T−1−t, as the
published code draws them). x_f, c_f are a batch of D_f with its labels, x_r, c_r one of D_r (drawn with
replacement from ``task.generator``). Every iterative method takes ``iterations`` Adam steps (lr ``lr``),
clips the gradient to norm ``clip``, and (SalUn) multiplies it by the saliency mask after the clip, before the
step, as the published ``saliency_unlearn`` does. Published defaults (Unlearn-Saliency DDPM): Adam lr 1e-4,
clip 1.0, α = 1e-3, batch 128, 1,000 iterations; the CLI scales iterations down for digits on a CPU.

- Retrain: train a new model on D_r with the original's recipe (`train.load_or_train`, ``exclude_classes``).
- FT:    min L(θ; x_r, c_r).
- GA:    min −L(θ; x_f, c_f) + α·L(θ; x_r, c_r).
- RL:    min MSE(ε_θ(x_t, t, c_f), sg[ε_θ(x_t, t, c')]) + α·L(θ; x_r, c_r), x_t from x_f, with
         c' = (c_f + 1) mod K (``pseudo="next"``, published) or uniform over the other classes ("random").
- SalUn: RL with the gradient multiplied by the saliency mask m (`saliency_scores`, `generation_mask`):
         m = top-50% of |Σ_batches clip₁(∇_θ L(θ; x_f, c_f))| over all weights, model in eval mode.
- ESD:   min MSE(ε_θ(x_t, t, c_f), ε*(x_t, t, ∅) − η[ε*(x_t, t, c_f) − ε*(x_t, t, ∅)]), ε* the frozen
         original, x_t the model's own partial DDIM generation conditioned on c_f (guidance ``guidance``)
         stopped at a uniformly drawn step (Gandikota et al. 2023). ``params="xattn"`` (ESD-x, default: the
         cross-attention ``attn2`` weights, where the class token enters) or ``"noxattn"`` (ESD-u: every UNet
         weight but those) or ``"unet"``.
- FMN:   min Σ_layers mean ‖A_ℓ[..., P]‖² over x_t from x_f, A_ℓ the cross-attention probabilities
         softmax(QKᵀ/√d) of layer ℓ (an attention processor records them) and P the concept's token positions
         (those where the context of c_f differs from the null context); Forget-Me-Not's attention
         re-steering (Zhang et al. 2023). Trains the cross-attention weights (``params="xattn"``) by default.

A user's method plugs in: any object with a ``name`` and ``unlearn(model, task) -> Unlearned`` (subclass
`GenerationMethod`), or ``"pkg.module:Class"`` through `resolve`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel.validate import Interval, Options
from unlearning.generation.task import GenerationTask
from unlearning.methods.base import Method, NoLowerLevelError, Unlearned, hparam
from unlearning.saliency import MaskHook, mask_fraction, top_fraction

Params = dict[str, Tensor]
Loss = Callable[[int], Tensor]


def _lr(default: float = 1e-4) -> Any:
    return hparam(default, Interval(float, 0, None, closed="neither"), "Adam learning rate")


def _iterations(default: int = 1000) -> Any:
    return hparam(default, Interval(int, 0, None), "number of Adam steps (published: 1000)")


def _batch(default: int = 128) -> Any:
    return hparam(default, Interval(int, 1, None), "images per batch (forget and remain each)")


def _alpha(default: float = 1e-3) -> Any:
    return hparam(default, Interval(float, 0, None), "weight α of the remain-class diffusion loss")


def _clip(default: float = 1.0) -> Any:
    return hparam(default, Interval(float, 0, None, closed="neither"), "gradient-norm clip")


PARAM_SETS = ("xattn", "noxattn", "unet", "all")


# ---------------------------------------------------------------------------------------------- the base
class GenerationMethod(Method):
    """Base class of the generation unlearning methods (subclasses are dataclasses of hyper-parameters)."""

    name: ClassVar[str] = ""

    def unlearn(self, model: nn.Module, task: GenerationTask) -> Unlearned:  # type: ignore[override]
        """Unlearn ``task.forget`` from a deep copy of ``model``; ``seconds`` is the wall-clock run time."""
        self.validate()
        check_model_task(model, task)
        work = copy.deepcopy(model)
        start = time.perf_counter()
        out, info = self._unlearn(work, task.to(_device(work)))
        seconds = time.perf_counter() - start
        return Unlearned(out, seconds, {"method": self.name, "hparams": self.hparams(), **info})

    def _unlearn(self, model: nn.Module, task: GenerationTask) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    def bind(self, model: nn.Module, task: Any) -> Method:
        raise NoLowerLevelError(
            f"{self.name}: generation methods expose class_loss(model, params, batch, weights) for the "
            "worst-case class search (unlearning.generation.worst_class), not bind/lower_loss"
        )


def check_model_task(model: Any, task: Any) -> None:
    """``model`` looks like a `ConditionalDiffusion` and ``task`` is a `GenerationTask` that fits it."""
    for attr in ("unet", "context", "num_classes"):
        if not hasattr(model, attr):
            raise TypeError(
                f"model must be a ConditionalDiffusion (unlearning.generation.model) with .unet, .context "
                f"and .num_classes; {type(model).__name__} has no {attr!r}"
            )
    if not isinstance(task, GenerationTask):
        raise TypeError(
            f"task must be an unlearning.generation.task.GenerationTask, got {type(task).__name__}"
        )
    if task.num_classes != model.num_classes:
        raise ValueError(
            f"task.num_classes = {task.num_classes} but the model was built for {model.num_classes} classes"
        )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------ shared pieces
def draw_batch(data: Any, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``size`` rows of ``data`` drawn uniformly with replacement."""
    idx = torch.randint(0, len(data), (size,), generator=generator, device=generator.device).to(data.x.device)
    return data.x[idx], data.y[idx]


def draw_noise(model: nn.Module, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(z₀, ε, t): z₀ = ``model.encode(x0)`` (diffusion space), ε ~ N(0, I) shaped like z₀, t antithetic
    (t₁..t_⌈B/2⌉ uniform, then T−1−t), as the published code draws them."""
    z0 = model.encode(x0)
    t = _diffusion().sample_timesteps(
        z0.shape[0], generator=generator, antithetic=True, device=z0.device, T=model.num_train_timesteps
    )
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    return z0, noise, t


def mean_squared_error(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean_pixels (a − b)²: ``F.mse_loss``'s convention, which the published code uses for the RL
    forget term and ESD uses for its loss."""
    return (a - b).pow(2).flatten(1).mean(1)


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ‖a − b‖² (summed over every non-batch dimension), the diffusion loss's convention."""
    return (a - b).pow(2).flatten(1).sum(1)


def pseudo_labels(labels: Tensor, num_classes: int, mode: str, generator: torch.Generator) -> Tensor:
    """c' = (c + 1) mod K (``"next"``, published) or c + U{1..K−1} mod K (``"random"``: another class)."""
    if mode == "next":
        return (labels + 1) % num_classes
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=generator.device)
    shift = shift.to(labels.device)
    return (labels + shift) % num_classes


def parameter_set(model: nn.Module, which: str) -> dict[str, nn.Parameter]:
    """The named parameters a method trains: ``"xattn"`` the UNet's cross-attention (``attn2``) weights,
    ``"noxattn"`` every other UNet weight, ``"unet"`` the whole UNet, ``"all"`` UNet and class tokens."""
    out = {}
    for name, p in model.named_parameters():
        in_unet = name.startswith("unet.")
        cross = ".attn2." in name
        keep = {
            "xattn": in_unet and cross,
            "noxattn": in_unet and not cross,
            "unet": in_unet,
            "all": True,
        }[which]
        if keep:
            out[name] = p
    if not out:
        raise ValueError(f"params={which!r} selects no parameter of this model (no cross-attention 'attn2'?)")
    return out


def fit(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    loss_fn: Loss,
    *,
    iterations: int,
    lr: float,
    clip: float,
    mask: Params | None = None,
    name: str = "method",
) -> list[float]:
    """``iterations`` Adam steps on ``loss_fn(step)`` over ``params`` (the others frozen): backward, clip the
    gradient norm to ``clip``, multiply by ``mask`` (if any), step. Returns the loss per step; a non-finite
    loss raises ``FloatingPointError``."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    hook = MaskHook(mask, freeze="grad") if mask is not None else None
    losses = []
    for step in range(iterations):
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: the loss became {float(loss)} at iteration {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        if hook is not None:
            hook.before_step(model, opt)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def _diffusion() -> Any:
    from unlearning.generation import diffusion

    return diffusion


def remain_loss(model: nn.Module, task: GenerationTask, batch: int, gen: torch.Generator) -> Tensor:
    """L(θ; x_r, c_r) on a batch of D_r."""
    x, y = draw_batch(task.remain_data, batch, gen)
    return _diffusion().diffusion_loss(model, x, y, generator=gen, antithetic=True)


def forget_loss(model: nn.Module, task: GenerationTask, batch: int, gen: torch.Generator) -> Tensor:
    """L(θ; x_f, c_f) on a batch of D_f."""
    x, y = draw_batch(task.forget_data, batch, gen)
    return _diffusion().diffusion_loss(model, x, y, generator=gen, antithetic=True)


def rl_forget_term(
    model: nn.Module, z0: Tensor, labels: Tensor, pseudo: Tensor, noise: Tensor, t: Tensor
) -> Tensor:
    """Per-sample mean_pixels (ε_θ(x_t, t, c_f) − sg[ε_θ(x_t, t, c')])², x_t = add_noise(z0, noise, t) (z0
    encoded): the published code's ``F.mse_loss`` (a mean over pixels, while the diffusion loss sums them)."""
    x_t = _diffusion().add_noise(z0, noise, t)
    with torch.no_grad():
        target = model(x_t, t, labels=pseudo)
    return mean_squared_error(model(x_t, t, labels=labels), target)


def _run_info(losses: list[float], **extra: Any) -> dict[str, Any]:
    return {"iterations": len(losses), "final_loss": losses[-1] if losses else None, **extra}


# ---------------------------------------------------------------------------------------------- methods
@dataclass
class Retrain(GenerationMethod):
    """Train a new model on D_r with the original model's recipe: ``task.train = (dataset, TrainConfig,
    cache_dir)`` with ``exclude_classes`` = C_f (`train.load_or_train`, cached like the original)."""

    name: ClassVar[str] = "retrain"

    def _unlearn(self, model: nn.Module, task: GenerationTask) -> tuple[nn.Module, dict[str, Any]]:
        from unlearning.generation import train as training

        if task.train is None:
            raise ValueError(
                "retrain needs task.train = (dataset, TrainConfig, cache_dir): the original model's recipe"
            )
        dataset, config, cache_dir = task.train
        config = dataclasses.replace(config, exclude_classes=tuple(task.forget))
        trained = training.load_or_train(dataset, config, cache_dir=cache_dir, device=_device(model))
        info = {"exclude_classes": list(task.forget), "from_cache": trained.from_cache}
        return trained.model, {**info, "train_seconds": trained.seconds}


class Iterative(GenerationMethod):
    """An Adam fine-tuning method: subclasses define ``loss_fn(model, task) -> (step -> loss)`` and may
    restrict the trained weights (``trained``) or mask their gradients (``mask``). ``class_terms`` gives the
    per-sample (forget, remain) terms of the objective for the worst-case class search."""

    lr: float
    iterations: int
    clip: float

    def trained(self) -> str:
        return getattr(self, "params", "all")

    def mask(self, model: nn.Module, task: GenerationTask) -> Params | None:
        return None

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        raise NotImplementedError

    def _unlearn(self, model: nn.Module, task: GenerationTask) -> tuple[nn.Module, dict[str, Any]]:
        mask = self.mask(model, task)
        params = parameter_set(model, self.trained())
        losses = fit(
            model,
            params,
            self.loss_fn(model, task),
            iterations=self.iterations,
            lr=self.lr,
            clip=self.clip,
            mask=mask,
            name=self.name,
        )
        extra = {} if mask is None else {"mask_fraction": mask_fraction(mask)}
        return model, {**_run_info(losses), "trained_tensors": len(params), **extra}

    def class_terms(self, model: Any, z0: Tensor, labels: Tensor, noise: Tensor, t: Tensor):
        raise NoLowerLevelError(f"{self.name} has no per-class objective for the worst-case class search")


def _eps_error(model: Any, z0: Tensor, labels: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Per-sample ‖ε − ε_θ(add_noise(z0, ε, t), t, c)‖² (z0 in diffusion space)."""
    return squared_error(model(_diffusion().add_noise(z0, noise, t), t, labels=labels), noise)


@dataclass
class FT(Iterative):
    """Fine-tune on the remaining classes only: min L(θ; x_r, c_r)."""

    name: ClassVar[str] = "ft"
    lr: float = _lr()
    iterations: int = _iterations()
    batch_size: int = _batch()
    clip: float = _clip()

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        gen = task.generator(device=_device(model))
        return lambda step: remain_loss(model, task, self.batch_size, gen)

    def class_terms(self, model: Any, z0: Tensor, labels: Tensor, noise: Tensor, t: Tensor):
        """Per-sample (forget term, remain term) at encoded images z0: (None, ‖ε − ε_θ‖²)."""
        return None, _eps_error(model, z0, labels, noise, t)


@dataclass
class GA(Iterative):
    """Gradient ascent on the forget classes: min −L(θ; x_f, c_f) + α·L(θ; x_r, c_r)."""

    name: ClassVar[str] = "ga"
    lr: float = _lr()
    iterations: int = _iterations()
    batch_size: int = _batch()
    alpha: float = _alpha()
    clip: float = _clip()

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        gen = task.generator(device=_device(model))

        def loss(step: int) -> Tensor:
            forget = forget_loss(model, task, self.batch_size, gen)
            return -forget + self.alpha * remain_loss(model, task, self.batch_size, gen)

        return loss

    def class_terms(self, model: Any, z0: Tensor, labels: Tensor, noise: Tensor, t: Tensor):
        """Per-sample (−‖ε − ε_θ‖², α‖ε − ε_θ‖²) at encoded images z0."""
        err = _eps_error(model, z0, labels, noise, t)
        return -err, self.alpha * err


@dataclass
class RL(Iterative):
    """Random labelling: min MSE(ε_θ(x_t, t, c_f), sg[ε_θ(x_t, t, c')]) + α·L(θ; x_r, c_r) (MSE: a mean over
    batch and pixels, as published; L sums over pixels, so α's balance depends on the image size: α = 1e-3 on
    CIFAR's 3·32·32 pixels is α ≈ 0.048 on 8x8 digits)."""

    name: ClassVar[str] = "rl"
    lr: float = _lr()
    iterations: int = _iterations()
    batch_size: int = _batch()
    alpha: float = _alpha()
    clip: float = _clip()
    pseudo: str = hparam("next", Options(("next", "random")), "c' = (c_f+1) mod K (published) or random")

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        """Draws, in order, from one generator seeded ``task.seed``: the forget batch, c' (random mode), t
        and ε of the forget batch, then the remain batch and its t and ε."""
        gen = task.generator(device=_device(model))
        k = task.num_classes

        def loss(step: int) -> Tensor:
            x, y = draw_batch(task.forget_data, self.batch_size, gen)
            pseudo = pseudo_labels(y, k, self.pseudo, gen)
            z0, noise, t = draw_noise(model, x, gen)
            forget = rl_forget_term(model, z0, y, pseudo, noise, t).mean()
            return forget + self.alpha * remain_loss(model, task, self.batch_size, gen)

        return loss

    def class_terms(self, model: Any, z0: Tensor, labels: Tensor, noise: Tensor, t: Tensor):
        """Per-sample (RL forget term with c' = (c+1) mod K, α‖ε − ε_θ‖²) at encoded images z0."""
        pseudo = (labels + 1) % model.num_classes
        forget = rl_forget_term(model, z0, labels, pseudo, noise, t)
        return forget, self.alpha * _eps_error(model, z0, labels, noise, t)


def saliency_scores(
    model: nn.Module, forget: Any, *, batch_size: int = 128, clip: float = 1.0, seed: int = 0
) -> Params:
    """S = |Σ_batches clip(∇_θ L(θ; x_f, c_f))| over D_f in order (batches of ``batch_size``), model in eval
    mode, antithetic t, each batch's gradient scaled to norm ≤ ``clip`` (``clip_grad_norm_``'s rule: × min(1,
    clip/(‖g‖ + 1e-6))); one generator seeded ``seed`` draws every (ε, t). Parameters: the whole model."""
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters()]
    flags = [p.requires_grad for _, p in named]  # an EMA model may come with requires_grad off
    for _, p in named:
        p.requires_grad_(True)
    total = [torch.zeros_like(p) for _, p in named]
    gen = torch.Generator(device=_device(model)).manual_seed(int(seed))
    try:
        for start in range(0, len(forget), batch_size):
            x, y = forget.x[start : start + batch_size], forget.y[start : start + batch_size]
            loss = _diffusion().diffusion_loss(model, x, y, generator=gen, antithetic=True)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, grads)]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
            for acc, g in zip(total, grads):
                acc += g * scale
    finally:
        model.train(was_training)
        for (_, p), flag in zip(named, flags):
            p.requires_grad_(flag)
    return {n: g.abs() for (n, _), g in zip(named, total)}


def generation_mask(model: nn.Module, task: GenerationTask, *, sparsity: float = 0.5, **kw: Any) -> Params:
    """SalUn's mask: the global top ``sparsity`` fraction of `saliency_scores` over D_f (1 = trainable)."""
    return top_fraction(saliency_scores(model, task.forget_data, seed=task.seed, **kw), sparsity)


@dataclass
class SalUn(RL):
    """RL with saliency-masked gradients (see `generation_mask`): SalUn's generation recipe."""

    name: ClassVar[str] = "salun"
    sparsity: float = hparam(0.5, Interval(float, 0, 1), "fraction of weights kept trainable by the mask")
    mask_batch_size: int = hparam(128, Interval(int, 1, None), "batch size of the saliency gradient")

    def mask(self, model: nn.Module, task: GenerationTask) -> Params:
        return generation_mask(
            model, task, sparsity=self.sparsity, batch_size=self.mask_batch_size, clip=self.clip
        )


# ------------------------------------------------------------------------------------------ ESD and FMN
def partial_generation(
    model: nn.Module,
    labels: Tensor,
    stop: int,
    *,
    steps: int,
    guidance: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """x_t after ``stop`` of ``steps`` DDIM steps from x_T ~ N(0, I) (diffusion space), conditioned on
    ``labels`` with classifier-free guidance ε̃ = ε(∅) + s(ε(c) − ε(∅)) (`diffusion.guided_eps`); returns
    (x_t, t) with t the timestep of the next step (the state ESD trains on). No gradient."""
    diffusion = _diffusion()
    sched = diffusion.sampling_scheduler("ddim", steps)
    device = labels.device
    x = torch.randn((labels.shape[0], *model.latent_shape), generator=generator, device=device)
    ctx = model.context(labels)
    with torch.no_grad():
        for t in sched.timesteps[:stop]:
            eps = diffusion.guided_eps(model, x, t.to(device), ctx, guidance)
            x = sched.step(eps, t, x).prev_sample
    t_next = torch.full_like(labels, int(sched.timesteps[stop]))
    return x, t_next


def esd_target(frozen: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor, eta: float) -> Tensor:
    """ε*(x_t, ∅) − η[ε*(x_t, c) − ε*(x_t, ∅)] from the frozen original ε*."""
    with torch.no_grad():
        null = torch.full_like(labels, frozen.num_classes)
        eps_u, eps_c = frozen(x_t, t, labels=null), frozen(x_t, t, labels=labels)
    return eps_u - eta * (eps_c - eps_u)


@dataclass
class ESD(Iterative):
    """Erased Stable Diffusion (see module): ε_θ(x_t, c_f) → ε*(x_t, ∅) − η[ε*(x_t, c_f) − ε*(x_t, ∅)]."""

    name: ClassVar[str] = "esd"
    lr: float = _lr()
    iterations: int = _iterations()
    batch_size: int = hparam(16, Interval(int, 1, None), "partial generations per step (ESD: 1)")
    clip: float = _clip()
    eta: float = hparam(1.0, Interval(float, 0, None), "negative guidance η")
    params: str = hparam("xattn", Options(PARAM_SETS), "trained weights: xattn (ESD-x), noxattn (ESD-u)")
    ddim_steps: int = hparam(50, Interval(int, 1, None), "DDIM steps of the partial generation")
    guidance: float = hparam(3.0, Interval(float, 0, None), "guidance of the partial generation (ESD: 3)")

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        """Draws, in order: the batch's classes (uniform over C_f), the stop step (uniform in
        0..ddim_steps−1), x_T; the partial generation runs with the current (trained) weights, no grad."""
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        gen = task.generator(device=_device(model))
        forget = torch.tensor(task.forget, device=_device(model))

        def loss(step: int) -> Tensor:
            pick = torch.randint(0, len(forget), (self.batch_size,), generator=gen, device=gen.device)
            labels = forget[pick.to(forget.device)]
            stop = int(torch.randint(0, self.ddim_steps, (1,), generator=gen, device=gen.device))
            x_t, t = partial_generation(
                model, labels, stop, steps=self.ddim_steps, guidance=self.guidance, generator=gen
            )
            target = esd_target(frozen, x_t, t, labels, self.eta)
            return mean_squared_error(model(x_t, t, labels=labels), target).mean()

        return loss


class AttentionRecorder:
    """A diffusers attention processor that computes attention as ``AttnProcessor`` does (softmax(QKᵀ/√d)V,
    no fused kernel) and appends the probabilities (batch·heads, queries, keys) to ``store``."""

    def __init__(self, store: list[Tensor]) -> None:
        self.store = store

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        residual = hidden_states
        shape = hidden_states.shape
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, HW, C)
            hidden_states = hidden_states.view(shape[0], shape[1], -1).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def record_cross_attention(unet: nn.Module, store: list[Tensor]) -> dict[str, Any]:
    """Install `AttentionRecorder` on every cross-attention (``attn2``) layer; returns the previous
    processors (give them to ``unet.set_attn_processor`` to undo)."""
    before = dict(unet.attn_processors)
    unet.set_attn_processor({k: AttentionRecorder(store) if ".attn2." in k else v for k, v in before.items()})
    return before


def concept_positions(model: nn.Module, label: int) -> Tensor:
    """The token positions of class ``label``'s context that differ from the null context (the concept's
    tokens; every position when the whole sequence is class-specific)."""
    device = _device(model)
    with torch.no_grad():
        ctx = model.context(torch.tensor([label, model.num_classes], device=device))
    differs = (ctx[0] != ctx[1]).any(dim=-1)
    return torch.nonzero(differs).flatten()


def attention_loss(maps: list[Tensor], positions: Tensor) -> Tensor:
    """FMN's re-steering loss Σ_ℓ mean ‖A_ℓ[..., P]‖² over the recorded cross-attention maps."""
    if not maps:
        raise ValueError("FMN recorded no cross-attention map: the UNet has no 'attn2' layer")
    return sum(m[..., positions].pow(2).sum(-1).mean() for m in maps)


@dataclass
class FMN(Iterative):
    """Forget-Me-Not attention re-steering (see module): min the concept tokens' cross-attention."""

    name: ClassVar[str] = "fmn"
    lr: float = _lr()
    iterations: int = _iterations(35)
    batch_size: int = _batch(16)
    clip: float = _clip()
    params: str = hparam("xattn", Options(PARAM_SETS), "trained weights (xattn: cross-attention)")

    def _unlearn(self, model: nn.Module, task: GenerationTask) -> tuple[nn.Module, dict[str, Any]]:
        positions = {c: concept_positions(model, c) for c in task.forget}
        length = model.context(torch.tensor([0], device=_device(model))).shape[1]
        for c, pos in positions.items():
            if len(pos) == length:
                raise ValueError(
                    f"fmn: every one of the {length} context token(s) of class {c} is class-specific, so the "
                    "softmax attention over them sums to 1 and cannot be re-steered; FMN needs a context "
                    "token shared with the null context, as Stable Diffusion's start token: build the model "
                    "with UNetConfig(start_token=True)"
                )
        self._store: list[Tensor] = []
        before = record_cross_attention(model.unet, self._store)
        try:
            out, info = super()._unlearn(model, task)
        finally:
            model.unet.set_attn_processor(before)
        return out, {**info, "positions": {c: p.tolist() for c, p in positions.items()}}

    def loss_fn(self, model: nn.Module, task: GenerationTask) -> Loss:
        """Σ over forget classes c of (share of c in the batch) · Σ_ℓ mean ‖A_ℓ[rows of c, :, P_c]‖²; draws
        the batch, then t and ε (needs `record_cross_attention` installed, as ``unlearn`` does)."""
        gen = task.generator(device=_device(model))
        positions = {c: concept_positions(model, c) for c in task.forget}
        store = self._store

        def loss(step: int) -> Tensor:
            x0, y = draw_batch(task.forget_data, self.batch_size, gen)
            z0, noise, t = draw_noise(model, x0, gen)
            store.clear()
            model(_diffusion().add_noise(z0, noise, t), t, labels=y)
            total = z0.new_zeros(())
            for c, pos in positions.items():
                rows = torch.nonzero(y == c).flatten()
                maps = [_rows(m, rows, x0.shape[0]) for m in store]
                total = total + attention_loss(maps, pos) * (len(rows) / x0.shape[0])
            return total

        return loss


def _rows(maps: Tensor, rows: Tensor, batch: int) -> Tensor:
    """The (batch·heads, Q, K) maps of the batch rows ``rows`` (heads are the inner index)."""
    heads = maps.shape[0] // batch
    return maps.view(batch, heads, *maps.shape[1:])[rows]


# ------------------------------------------------------------------------------------------- registry
REGISTRY: dict[str, type[GenerationMethod]] = {
    cls.name: cls for cls in (Retrain, FT, GA, RL, SalUn, ESD, FMN)
}
NAMES = tuple(REGISTRY)


def make(name: str, **hparams: Any) -> GenerationMethod:
    """The generation method ``name`` with ``hparams`` (the others at their defaults); ``ValueError`` for an
    unknown name or hyper-parameter (listing the valid ones) or a value out of range."""
    cls = REGISTRY.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown generation unlearning method {name!r}: choose one of {', '.join(NAMES)}")
    valid = cls.hyperparameters()
    unknown = [k for k in hparams if k not in valid]
    if unknown:
        listed = ", ".join(valid) or "(none)"
        raise ValueError(f"{cls.name}: unknown hyper-parameter {unknown[0]!r}; valid: {listed}")
    return cls(**hparams)


def resolve(spec: Any, **hparams: Any) -> Any:
    """A method from a name in `REGISTRY`, a ``"pkg.module:Class"`` path (class, factory or instance), a
    class, or an object with ``name`` and ``unlearn(model, task)`` (a user's own method)."""
    from unlearning.methods import registry

    if isinstance(spec, str) and ":" not in spec:
        return make(spec, **hparams)
    return registry.resolve(spec, **hparams)


__all__ = [
    "GenerationMethod",
    "REGISTRY",
    "NAMES",
    "make",
    "resolve",
    "Retrain",
    "FT",
    "GA",
    "RL",
    "SalUn",
    "ESD",
    "FMN",
    "saliency_scores",
    "generation_mask",
    "AttentionRecorder",
    "record_cross_attention",
    "concept_positions",
    "partial_generation",
    "esd_target",
]
