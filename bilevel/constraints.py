"""Constraint sets for the outer variable, each with a Euclidean projection, and ``top_k`` binarization.

A constraint is a small object with ``project(w) -> Tensor`` (the Euclidean projection
P(w) = argmin_{x ∈ C} ½‖x − w‖²) and ``contains(w, tol) -> bool``. ``bilevel.minimize`` calls
``constraint.project`` on the outer variable after every outer step (one constraint, or a dict
name -> constraint, one per entry of the outer parameter dict).

- `Box` (lo ≤ w ≤ hi): clamp.
- `CappedSimplex` ({w ∈ [0, 1]^N : Σ w = k}): the exact projection by sorting, O(N log N).
- `top_k`: the binary vector of the k largest entries (the final forget set of the worst-case search).
"""

from __future__ import annotations

import abc
import math
import numbers

import torch
from torch import Tensor

__all__ = ["Constraint", "Box", "CappedSimplex", "top_k"]


class Constraint(abc.ABC):
    """A closed convex set C with its Euclidean projection. Any object with ``project`` counts."""

    @abc.abstractmethod
    def project(self, w: Tensor) -> Tensor:
        """argmin_{x ∈ C} ½‖x − w‖² (a new tensor; ``w`` is not modified)."""

    @abc.abstractmethod
    def contains(self, w: Tensor, tol: float = 1e-6) -> bool:
        """Whether ``w`` lies in C up to ``tol``."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        if cls is Constraint:
            return True if callable(getattr(other, "project", None)) else NotImplemented
        return NotImplemented


def _check_tensor(w: object, who: str, *, one_d: bool) -> Tensor:
    if not isinstance(w, Tensor):
        raise TypeError(f"{who}: w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(
            f"{who}: w must be a floating tensor, got dtype {w.dtype}; use w.float() or w.double()"
        )
    if one_d and w.dim() != 1:
        raise ValueError(
            f"{who}: w must be a 1-D tensor (one weight per example), got shape {tuple(w.shape)}; "
            "flatten it (w.reshape(-1)) or project each row separately"
        )
    if w.numel() == 0:
        raise ValueError(f"{who}: w is empty")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{who}: w contains NaN or Inf; check the outer step size and the hypergradient")
    return w


def _real(value: object, who: str, name: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__}")
    return float(value)


# --------------------------------------------------------------------------------------------------------
# Box
# --------------------------------------------------------------------------------------------------------


class Box(Constraint):
    """The box {w : lo ≤ w ≤ hi} (entrywise); P(w) = clamp(w, lo, hi) = min(max(w, lo), hi).

    ``lo`` and ``hi`` are numbers (±inf allowed for a half-bounded box) or tensors broadcastable to ``w``
    (per-entry bounds); ``lo ≤ hi`` everywhere.
    """

    def __init__(self, lo: float | Tensor = 0.0, hi: float | Tensor = 1.0) -> None:
        if not isinstance(lo, Tensor):
            lo = _real(lo, "Box", "lo")
        if not isinstance(hi, Tensor):
            hi = _real(hi, "Box", "hi")
        lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
        if bool(torch.isnan(lo_t).any() | torch.isnan(hi_t).any()):
            raise ValueError("Box: lo and hi must not be NaN")
        if not bool((lo_t <= hi_t).all()):
            raise ValueError(f"Box: needs lo ≤ hi (entrywise), got lo={lo}, hi={hi}")
        self.lo, self.hi = lo, hi

    def __repr__(self) -> str:
        return f"Box(lo={self.lo}, hi={self.hi})"

    def project(self, w: Tensor) -> Tensor:
        _check_tensor(w, "Box.project", one_d=False)
        lo = torch.as_tensor(self.lo, dtype=w.dtype, device=w.device)
        hi = torch.as_tensor(self.hi, dtype=w.dtype, device=w.device)
        return torch.clamp(w, lo, hi)

    def contains(self, w: Tensor, tol: float = 1e-6) -> bool:
        """lo − tol ≤ w ≤ hi + tol entrywise."""
        _check_tensor(w, "Box.contains", one_d=False)
        return bool(((w >= self.lo - tol) & (w <= self.hi + tol)).all())


# --------------------------------------------------------------------------------------------------------
# capped simplex
# --------------------------------------------------------------------------------------------------------


class CappedSimplex(Constraint):
    r"""The capped simplex Δ_k = {w ∈ [0, 1]^N : Σ_i w_i = k}, 0 < k ≤ N (k may be fractional).

    Projection. The KKT conditions of min ½‖x − w‖² over Δ_k give x* = clip(w − μ, 0, 1) with μ a root of

        φ(μ) = Σ_i clip(w_i − μ, 0, 1) = k.

    φ is continuous, non-increasing and piecewise linear with the 2N breakpoints {w_i − 1} ∪ {w_i}. We sort
    them, find the segment [b_lo, b_hi] between consecutive breakpoints with φ(b_lo) ≥ k > φ(b_hi) (a
    search over the sorted breakpoints, φ evaluated directly), read off the active sets on it,
    F = {i : w_i − 1 ≤ b_lo, w_i ≥ b_hi} (free: 0 < x_i < 1) and U = {i : w_i − 1 ≥ b_hi} (x_i = 1), and
    solve the linear equation on that segment exactly:

        μ = (Σ_{i∈F} w_i + |U| − k) / |F|,    x_F = w_F − μ,  x_U = 1,  x = 0 elsewhere.

    O(N log N), no tolerance and no iteration cap: exact up to floating-point rounding (the published
    worst-case forget-set code bisects on μ to 1e-5 instead). x_F is computed relative to b_hi, so Σx = k
    holds to rounding even for |w| ~ 1e8 and tiny k. The result is differentiable almost everywhere with
    the true Jacobian (I − 11ᵀ/|F| on the free block, 0 elsewhere). For k = N it is the all-ones vector.

    Works for 1-D floating tensors on any device, in their own dtype.
    """

    def __init__(self, k: float) -> None:
        k = _real(k, "CappedSimplex", "k")
        if not (math.isfinite(k) and k > 0):
            raise ValueError(
                f"CappedSimplex: k must be > 0 (the total weight Σw, e.g. the forget-set size), got k={k}"
            )
        self.k = k

    def __repr__(self) -> str:
        return f"CappedSimplex(k={self.k:g})"

    def _check_k(self, n: int, who: str) -> None:
        if self.k > n:
            raise ValueError(
                f"{who}: k={self.k:g} exceeds N={n}, the number of entries of w; Σw = k needs 0 < k ≤ N "
                "(lower k or pass the full vector of weights)"
            )

    def project(self, w: Tensor) -> Tensor:
        _check_tensor(w, "CappedSimplex.project", one_d=True)
        n = w.numel()
        self._check_k(n, "CappedSimplex.project")
        k = self.k
        if k == n:
            return torch.ones_like(w) + 0 * w  # keeps w's graph (derivative 0)
        wd = w.detach()
        wm1 = wd - 1
        bs, order = torch.sort(torch.cat([wm1, wd]))  # the 2N breakpoints of φ
        # 1) candidate segment from φ at every breakpoint by cumulative sums: just right of b_j, the entries
        #    whose w_i - 1 ≤ b_j have left 1 ("entered"), those whose w_i ≤ b_j are at 0 ("exited")
        enter = order < n
        w_at = torch.cat([wd, wd])[order]
        n_enter = torch.cumsum(enter, 0)
        n_free = 2 * n_enter - torch.arange(1, 2 * n + 1, device=w.device)  # entered - exited
        s_free = torch.cumsum(torch.where(enter, w_at, -w_at), 0)  # Σ w_i over the free entries
        phi_approx = (n - n_enter) + s_free - n_free * bs
        j = min(max(int((phi_approx >= k).sum()) - 1, 0), 2 * n - 2)
        # 2) confirm it with φ(b) = Σ clip(w - b, 0, 1) evaluated directly (each term in [0, 1]: accurate for
        #    any |w|, unlike the cumulative sums); where rounding misplaced it, search the sorted breakpoints,
        #    up to P per round. Invariant: φ(b_lo) ≥ k > φ(b_hi); φ(b_0) = N > k, φ(b_{2N-1}) = 0 < k.
        lo, hi = 0, 2 * n - 1
        phi_j = torch.clamp(wd.unsqueeze(0) - bs[j : j + 2].unsqueeze(1), 0, 1).sum(1).tolist()
        if phi_j[0] >= k:
            lo = j
        else:
            hi = j
        if phi_j[1] < k:
            hi = min(hi, j + 1)
        else:
            lo = max(lo, j + 1)
        probes = max(1, min(64, (1 << 22) // n))
        while hi - lo > 1:
            if hi - lo - 1 <= probes:
                idx = list(range(lo + 1, hi))
            else:
                idx = [lo + (hi - lo) * i // (probes + 1) for i in range(1, probes + 1)]
            b = bs[torch.tensor(idx, device=w.device)]
            phi = torch.clamp(wd.unsqueeze(0) - b.unsqueeze(1), 0, 1).sum(1)
            c = int((phi >= k).sum())  # φ is non-increasing: the probes with φ ≥ k come first
            if c > 0:
                lo = idx[c - 1]
            if c < len(idx):
                hi = idx[c]
        b_lo, b_hi = bs[lo], bs[hi]
        # active sets on the open segment (b_lo, b_hi), which contains μ
        free = (wm1 <= b_lo) & (wd >= b_hi)  # w_i - 1 < μ < w_i
        ones = wm1 >= b_hi  # w_i - μ > 1
        nf = free.sum().clamp_min(1).to(w.dtype)
        nu = ones.sum().to(w.dtype)
        # x_F = w_F - μ with μ = mean(w_F) - (k - |U|)/|F|, written relative to r = b_hi (the free w lie
        # within 1 of it) so that huge |w| lose nothing: x_F = (w_F - r) - mean(w_F - r) + (k - |U|)/|F|
        dev = torch.where(free, w - b_hi, 0.0)
        x_free = dev - dev.sum() / nf + (k - nu) / nf
        return torch.where(free, x_free, ones.to(w.dtype)).clamp(0.0, 1.0)

    def contains(self, w: Tensor, tol: float = 1e-6) -> bool:
        """−tol ≤ w_i ≤ 1 + tol for all i and |Σw − k| ≤ tol·max(1, k)."""
        _check_tensor(w, "CappedSimplex.contains", one_d=True)
        self._check_k(w.numel(), "CappedSimplex.contains")
        in_box = bool(((w >= -tol) & (w <= 1 + tol)).all())
        return in_box and abs(float(w.detach().sum()) - self.k) <= tol * max(1.0, self.k)


# --------------------------------------------------------------------------------------------------------
# top-k
# --------------------------------------------------------------------------------------------------------


def top_k(w: Tensor, k: int) -> Tensor:
    """Binarize: 1 on the k largest entries of ``w``, 0 elsewhere (same shape and dtype as ``w``).

    Ties are broken deterministically, lowest (flattened) index first. ``0 ≤ k ≤ w.numel()``. This turns the
    continuous capped-simplex weights of the worst-case search into a forget set of exactly k examples.
    """
    _check_tensor(w, "top_k", one_d=False)
    if isinstance(k, bool):
        raise TypeError(f"top_k: k must be an integer (the number of entries to keep), got {k!r}")
    if not isinstance(k, numbers.Integral):
        if isinstance(k, numbers.Real) and float(k).is_integer():
            k = int(k)
        else:
            raise TypeError(f"top_k: k must be an integer (the number of entries to keep), got {k!r}")
    n = w.numel()
    if not 0 <= k <= n:
        raise ValueError(f"top_k: k must satisfy 0 ≤ k ≤ N = {n} (the number of entries of w), got k={k}")
    flat = w.detach().reshape(-1)
    # stable descending sort keeps equal values in index order: ties go to the lowest index
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    out = torch.zeros(n, dtype=w.dtype, device=w.device)
    out[order] = 1
    return out.reshape(w.shape)
