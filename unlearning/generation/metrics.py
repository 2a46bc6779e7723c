"""Metrics of class forgetting in a class-conditional generator, written as the classifier side writes them.

With the judge J (`judge.py`) and n generated images per class:

- **UA** (unlearning accuracy, as published): the share of images generated for a forgotten class c_f that J
  does NOT label c_f: UA = mean[J(x) ≠ c_f], x ~ p_θ(· | c_f).
- **remaining accuracy**: the share of images generated for each remaining class c that J labels c.
- **FID on the remaining classes, in J's feature space** (NOT Inception-FID: no Inception weights can be
  downloaded here): with φ = J's penultimate activations, (μ_g, Σ_g) of the generated remaining-class images
  and (μ_r, Σ_r) of the real ones, FID = ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2 (Σ_g^{1/2} Σ_r Σ_g^{1/2})^{1/2}).
  Comparable between models judged by the same J, not with published FIDs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..data_types import ArrayData
from .diffusion import sample


@dataclass
class GenerationMetrics:
    """Forgetting metrics of one model (shares in [0, 1]; ``fid`` in the judge's feature space)."""

    ua: float | None
    remain_acc: float
    fid: float
    per_class_acc: dict[int, float]
    forget_classes: tuple[int, ...]
    per_class: int
    sample_seconds: float
    images: Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """JSON-able fields (the images left out)."""
        out = asdict(self)
        out.pop("images")
        out["per_class_acc"] = {str(k): v for k, v in self.per_class_acc.items()}
        return out


def class_accuracy(judge, images: Tensor, labels: Tensor) -> float:
    """mean[J(x_i) = y_i]."""
    return float((judge.predict(images) == labels.to(images.device)).float().mean())


def unlearning_accuracy(judge, images: Tensor, forget_class: int) -> float:
    """UA = mean[J(x_i) ≠ c_f] over images generated for the forgotten class c_f."""
    return float((judge.predict(images) != int(forget_class)).float().mean())


@torch.no_grad()
def features(judge, images: Tensor, batch_size: int = 1024) -> Tensor:
    """φ(x) for every image, float64."""
    judge.eval()
    return torch.cat(
        [judge.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    ).double()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}) of feature rows ``a`` and ``b``
    (sample means and covariances, float64; the matrix root by symmetric eigendecomposition)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError("frechet_distance: give two (n, d) feature matrices with the same d and n >= 2")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * cross
    return max(float(value), 0.0)


def _psd_sqrt(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def fid(judge, generated: Tensor, real: Tensor) -> float:
    """FID between ``generated`` and ``real`` images in the judge's feature space."""
    return frechet_distance(features(judge, generated), features(judge, real))


def evaluate_generation(
    model,
    judge,
    real: ArrayData,
    forget_classes: Iterable[int] = (),
    *,
    per_class: int = 100,
    steps: int = 50,
    guidance: float = 2.0,
    seed: int = 0,
) -> GenerationMetrics:
    """Generate ``per_class`` images of every class (DDIM ``steps``, guidance ``guidance``, noise seeded by
    ``seed``) and score them: UA over the forgotten classes (None when there are none), accuracy and FID
    (against the ``real`` images of the same classes) over the remaining ones; ``images`` is
    (K, per_class, C, H, W)."""
    forget = tuple(sorted({int(c) for c in forget_classes}))
    k = model.num_classes
    if any(not 0 <= c < k for c in forget):
        raise ValueError(f"forget_classes: {forget} must lie in [0, {k - 1}]")
    labels = torch.arange(k).repeat_interleave(per_class)
    start = time.perf_counter()
    images = sample(
        model, labels, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(seed)
    )
    seconds = time.perf_counter() - start
    images = images.cpu()
    preds = judge.predict(images.to(_device(judge))).cpu().view(k, per_class)
    per_class_acc = {c: float((preds[c] == c).float().mean()) for c in range(k)}
    remain = [c for c in range(k) if c not in forget]
    ua = float((preds[list(forget)] != torch.tensor(forget).view(-1, 1)).float().mean()) if forget else None
    remain_acc = float(sum(per_class_acc[c] for c in remain) / max(1, len(remain)))
    real_remain = real.x[torch.isin(real.y, torch.tensor(remain, device=real.y.device))]
    gen_remain = images.view(k, per_class, *images.shape[1:])[remain].flatten(0, 1)
    dev = _device(judge)
    value = fid(judge, gen_remain.to(dev), real_remain.to(dev)) if remain else float("nan")
    return GenerationMetrics(
        ua,
        remain_acc,
        value,
        per_class_acc,
        forget,
        per_class,
        seconds,
        images.view(k, per_class, *images.shape[1:]),
    )


def _device(module) -> torch.device:
    return next(module.parameters()).device
