"""bilevel.constraints: exact capped-simplex projection (vs an independent bisection and KKT), Box, top_k."""

from __future__ import annotations

import itertools

import pytest
import torch

from bilevel.constraints import Box, CappedSimplex, Constraint, top_k

DT = torch.float64
EPS = torch.finfo(DT).eps


def bisection_projection(w: torch.Tensor, k: float, iters: int = 400) -> torch.Tensor:
    """Independent reference: bisection on μ for Σ clip(w − μ, 0, 1) = k, run until the bracket stops
    shrinking (far below 1e-14 relative), then x = clip(w − μ, 0, 1)."""
    lo, hi = float(w.min()) - 1.0, float(w.max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if float(torch.clamp(w - mid, 0, 1).sum()) > k:
            lo = mid
        else:
            hi = mid
    return torch.clamp(w - 0.5 * (lo + hi), 0, 1)


def scale_of(w: torch.Tensor) -> float:
    return max(1.0, float(w.abs().max()))


def assert_kkt(w: torch.Tensor, x: torch.Tensor, k: float) -> None:
    """x is the projection iff x ∈ Δ_k and ∃ μ: w_i − x_i = μ on free entries, w_i ≤ μ where x_i = 0,
    w_i − 1 ≥ μ where x_i = 1."""
    n = w.numel()
    tol = 64 * EPS * scale_of(w) * max(1.0, n**0.5)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert abs(float(x.sum()) - k) <= 64 * EPS * max(1.0, k) * n**0.5 + tol
    free = (x > 0) & (x < 1)
    zero, one = x == 0, x == 1
    if free.any():
        r = w[free] - x[free]
        mu = float(r.mean())
        assert float((r - mu).abs().max()) <= tol
    else:  # any μ between the two groups
        mu = 0.5 * (float(w[zero].max()) if zero.any() else float(w[one].min() - 1))
        mu = mu + 0.5 * (float(w[one].min() - 1) if one.any() else float(w[zero].max()))
    if zero.any():
        assert float(w[zero].max()) <= mu + tol
    if one.any():
        assert float((w[one] - 1).min()) >= mu - tol


def _cases():
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (1, 2, 3, 7, 50, 1000):
        ks = {1e-9, 0.5, n / 2, n / 3 + 0.123, n - 1e-9, n - 0.5, float(n)}
        if n >= 2:
            ks |= {1.0, float(n - 1), float(n // 2)}
        for k in sorted(kk for kk in ks if 0 < kk <= n):
            for kind in ("normal", "ties", "huge", "small", "uniform"):
                if kind == "normal":
                    w = torch.randn(n, generator=g, dtype=DT)
                elif kind == "ties":
                    w = torch.randint(-2, 3, (n,), generator=g).to(DT) / 2
                elif kind == "huge":
                    w = 1e8 * torch.randn(n, generator=g, dtype=DT)
                elif kind == "small":
                    w = 1e-8 * torch.randn(n, generator=g, dtype=DT)
                else:
                    w = torch.rand(n, generator=g, dtype=DT)
                out.append((w, k))
    return out


CASES = _cases()


def test_projection_equals_bisection_and_satisfies_kkt():
    for w, k in CASES:
        x = CappedSimplex(k).project(w)
        assert x.shape == w.shape and x.dtype == w.dtype
        ref = bisection_projection(w, k)
        tol = 64 * EPS * (scale_of(w) + k)  # the sum constraint itself is only known to ~ulp(k)
        assert float((x - ref).abs().max()) <= tol, (w.numel(), k)
        assert_kkt(w, x, k)
        # Σx = k to rounding in k, whatever the magnitude of w (x_F is computed relative to a breakpoint)
        assert abs(float(x.sum()) - k) <= 1e-13 * max(1.0, k), (w.numel(), k, float(x.sum()) - k)


def test_projection_is_idempotent_and_keeps_feasible_points():
    for w, k in CASES[::3]:
        x = CappedSimplex(k).project(w)
        xx = CappedSimplex(k).project(x)
        torch.testing.assert_close(xx, x, rtol=0, atol=16 * EPS * max(1.0, k))
    # exactly feasible points are returned unchanged, bit for bit
    g = torch.Generator().manual_seed(2)
    for n, k in [(5, 2), (10, 3), (10, 10), (1, 1), (100, 37)]:
        binary = torch.zeros(n, dtype=DT)
        binary[torch.randperm(n, generator=g)[:k]] = 1
        assert torch.equal(CappedSimplex(k).project(binary), binary)
    interior = torch.full((8,), 0.375, dtype=DT)  # Σ = 3
    assert torch.equal(CappedSimplex(3).project(interior), interior)
    mixed = torch.tensor([1.0, 0.0, 0.25, 0.75, 1.0], dtype=DT)  # Σ = 3
    assert torch.equal(CappedSimplex(3).project(mixed), mixed)


def test_variational_inequality_against_random_feasible_points():
    """⟨w − P(w), z − P(w)⟩ ≤ 0 for every z ∈ Δ_k (feasible z from the independent bisection)."""
    g = torch.Generator().manual_seed(3)
    for n, k in [(7, 2.5), (50, 1.0), (50, 49.5), (200, 13.7)]:
        c = CappedSimplex(k)
        for _ in range(5):
            w = 3 * torch.randn(n, generator=g, dtype=DT)
            p = c.project(w)
            for _ in range(10):
                z = bisection_projection(2 * torch.randn(n, generator=g, dtype=DT), k)
                assert float(torch.dot(w - p, z - p)) <= 1e-12 * max(1.0, float(w.abs().max())) * n


def test_special_k_and_n():
    w = torch.tensor([0.3, -2.0, 5.0], dtype=DT)
    assert torch.equal(CappedSimplex(3).project(w), torch.ones(3, dtype=DT))  # k = N
    torch.testing.assert_close(
        CappedSimplex(0.4).project(torch.tensor([7.0], dtype=DT)), torch.tensor([0.4], dtype=DT)
    )
    # k tiny: all the mass on the largest entry
    x = CappedSimplex(1e-12).project(torch.tensor([0.1, 0.2, 0.15], dtype=DT))
    torch.testing.assert_close(x, torch.tensor([0.0, 1e-12, 0.0], dtype=DT), rtol=1e-3, atol=0)
    # all-equal entries: uniform k/N
    torch.testing.assert_close(
        CappedSimplex(2.5).project(torch.full((10,), 4.2, dtype=DT)), torch.full((10,), 0.25, dtype=DT)
    )
    # integer k with a gap (flat φ at k): exactly binary
    w = torch.tensor([5.0, 5.0, 0.0, 0.0], dtype=DT)
    assert torch.equal(CappedSimplex(2).project(w), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=DT))


def test_float32_and_huge_offsets():
    g = torch.Generator().manual_seed(4)
    w64 = torch.randn(300, generator=g, dtype=DT)
    for k in (1.0, 17.3, 150.0):
        x32 = CappedSimplex(k).project(w64.float())
        assert x32.dtype == torch.float32
        torch.testing.assert_close(
            x32.double(), bisection_projection(w64.float().double(), k), rtol=0, atol=1e-5
        )
    # a huge common offset: the projection is shift-invariant up to the resolution of w
    w = torch.randn(100, generator=g, dtype=DT)
    x0 = CappedSimplex(10).project(w)
    x1 = CappedSimplex(10).project(w + 1e9)
    torch.testing.assert_close(x1, x0, rtol=0, atol=1e9 * 8 * EPS)


def test_projection_jacobian():
    """Differentiable a.e.: Jacobian = I − 11ᵀ/|F| on the free block (gradcheck: finite differences)."""
    w = torch.tensor([0.3, 1.9, -0.8, 0.55, 0.1, 2.7, 0.42], dtype=DT, requires_grad=True)
    c = CappedSimplex(2.2)
    assert torch.autograd.gradcheck(c.project, (w,), eps=1e-7, atol=1e-7)
    x = c.project(w)
    free = ((x > 0) & (x < 1)).nonzero().flatten()
    assert 1 <= free.numel() < 7
    J = torch.autograd.functional.jacobian(c.project, w.detach())
    nf = free.numel()
    expect = torch.zeros(7, 7, dtype=DT)
    expect[free.unsqueeze(1), free] = torch.eye(nf, dtype=DT) - 1.0 / nf
    torch.testing.assert_close(J, expect, rtol=0, atol=1e-14)


def test_capped_simplex_errors():
    for bad in (0, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="k must be > 0"):
            CappedSimplex(bad)
    with pytest.raises(TypeError, match="k"):
        CappedSimplex("3")
    with pytest.raises(TypeError, match="k"):
        CappedSimplex(True)
    with pytest.raises(ValueError, match=r"k=4 exceeds N=3"):
        CappedSimplex(4).project(torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match=r"k=3.5 exceeds N=3"):
        CappedSimplex(3.5).contains(torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match="1-D"):
        CappedSimplex(1).project(torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="1-D"):
        CappedSimplex(1).project(torch.tensor(0.5, dtype=DT))
    with pytest.raises(ValueError, match="empty"):
        CappedSimplex(1).project(torch.zeros(0, dtype=DT))
    with pytest.raises(ValueError, match="NaN"):
        CappedSimplex(1).project(torch.tensor([0.1, float("nan")], dtype=DT))
    with pytest.raises(TypeError, match="floating"):
        CappedSimplex(1).project(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="Tensor"):
        CappedSimplex(1).project([0.1, 0.2])


def test_contains():
    c = CappedSimplex(2)
    assert c.contains(torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=DT))
    assert not c.contains(torch.tensor([1.0, 0.5, 0.6, 0.0], dtype=DT))
    assert not c.contains(torch.tensor([1.2, 0.5, 0.3, 0.0], dtype=DT))
    assert c.contains(torch.tensor([1.0, 0.5, 0.5 + 1e-9, 0.0], dtype=DT), tol=1e-6)
    assert not c.contains(torch.tensor([1.0, 0.5, 0.5 + 1e-9, 0.0], dtype=DT), tol=1e-12)
    for w, k in CASES[::5]:
        assert CappedSimplex(k).contains(CappedSimplex(k).project(w), tol=1e-12)


def test_box():
    b = Box()
    w = torch.tensor([-0.5, 0.2, 1.7], dtype=DT)
    assert torch.equal(b.project(w), torch.tensor([0.0, 0.2, 1.0], dtype=DT))
    assert not b.contains(w) and b.contains(b.project(w))
    assert b.contains(torch.tensor([1.0 + 1e-9]), tol=1e-6)
    half = Box(lo=0.0, hi=float("inf"))
    assert torch.equal(half.project(w), torch.tensor([0.0, 0.2, 1.7], dtype=DT))
    per_entry = Box(lo=torch.tensor([0.0, 0.5, -1.0], dtype=DT), hi=torch.tensor([1.0, 0.5, 0.0], dtype=DT))
    assert torch.equal(per_entry.project(w), torch.tensor([0.0, 0.5, 0.0], dtype=DT))
    assert torch.equal(Box(-1, 1).project(torch.ones(2, 2) * 3), torch.ones(2, 2))  # any shape
    assert isinstance(b, Constraint) and isinstance(CappedSimplex(1), Constraint)
    with pytest.raises(ValueError, match="lo ≤ hi"):
        Box(1.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        Box(float("nan"), 1.0)
    with pytest.raises(TypeError, match="lo"):
        Box("0", 1.0)


def test_top_k():
    w = torch.tensor([0.1, 3.0, 3.0, 2.0, 3.0, -1.0], dtype=DT)
    assert torch.equal(top_k(w, 2), torch.tensor([0, 1, 1, 0, 0, 0], dtype=DT))  # ties: lowest index first
    assert torch.equal(top_k(w, 4), torch.tensor([0, 1, 1, 1, 1, 0], dtype=DT))
    assert torch.equal(top_k(w, 0), torch.zeros(6, dtype=DT))
    assert torch.equal(top_k(w, 6), torch.ones(6, dtype=DT))
    assert top_k(w.float(), 3).dtype == torch.float32
    ties = torch.zeros(10, dtype=DT)
    assert torch.equal(top_k(ties, 3), torch.tensor([1.0] * 3 + [0.0] * 7, dtype=DT))
    g = torch.Generator().manual_seed(6)
    for n, k in itertools.product((1, 5, 100, 1001), (0, 1, 3)):
        if k > n:
            continue
        v = torch.randn(n, generator=g, dtype=DT)
        m = top_k(v, k)
        assert int(m.sum()) == k and set(m.unique().tolist()) <= {0.0, 1.0}
        if 0 < k < n:
            assert float(v[m == 1].min()) >= float(v[m == 0].max())
    assert torch.equal(
        top_k(torch.tensor([[1.0, 4.0], [3.0, 2.0]]), 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    )
    assert torch.equal(top_k(w, 2.0), top_k(w, 2))
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="0 ≤ k ≤ N = 6"):
            top_k(w, bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError, match="k must be an integer"):
            top_k(w, bad)
    with pytest.raises(ValueError, match="NaN"):
        top_k(torch.tensor([1.0, float("nan")]), 1)
