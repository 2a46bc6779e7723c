"""Workloads with closed-form hypergradients (ridge at inner dim 10²…10⁴, weighted ridge), their contestants.

Every contestant starts from θ_0 = 0 at the same outer point and returns ∇F as one flat float64 tensor; the
error reported beside its time is ‖∇F − ∇F_exact‖ / ‖∇F_exact‖ against the closed form at the *exact* inner
solution, so unrolled methods carry the bias of stopping after T steps and implicit ones that of an inner
solve of S steps and K linear-solver iterations. Inner steps are gradient descent with lr = 1/L.

Ridge (`scaled_ridge`): n = 200 training and m = 200 validation rows, p features (the inner dimension),

    g(w, λ) = (1/2n)‖Xw − y‖² + ½ Σ_j λ_{group(j)} w_j²,      f(w) = (1/2m)‖X_v w − y_v‖²,

with X scaled so that the largest eigenvalue of XᵀX/n is about 1 at every p, and λ = 0.03 (condition number
about 35 at every p). ``groups`` outer entries share the p penalties (1 = a single λ; p = one per feature).
The closed form uses the Woodbury identity on the n × n Gram matrix, so it is exact and cheap at p = 10⁴:

    H = D + XᵀX/n,   H⁻¹b = D⁻¹b − D⁻¹Xᵀ(nI + X D⁻¹ Xᵀ)⁻¹ X D⁻¹ b,
    w* = H⁻¹Xᵀy/n,   v = H⁻¹ X_vᵀ(X_v w* − y_v)/m,   ∂F/∂λ_k = −Σ_{j in group k} w*_j v_j.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bilevel import CG, BilevelProblem, Direct, FirstOrder, Forward, Implicit, Neumann, Unrolled, optim
from bilevel import problems as bproblems
from bilevel.inner import run_inner
from bilevel.problem import DataStream
from bilevel.tree import Params

RefContestant = Callable[["Ref"], Callable[[], Tensor]]


@dataclass
class Ref:
    """A problem with its closed-form ∇F; ``T`` unrolled steps, ``S`` inner steps before implicit solves."""

    name: str
    problem: BilevelProblem
    inner_init: Params
    outer: Params
    exact: Tensor  # flat closed-form ∇F at ``outer``
    L: float
    mu: float
    T: int = 100
    S: int = 100
    K: int = 20
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return 1.0 / self.L

    @property
    def inner_dim(self) -> int:
        return sum(v.numel() for v in self.inner_init.values())

    @property
    def outer_dim(self) -> int:
        return sum(v.numel() for v in self.outer.values())

    def error(self, grad: Tensor) -> float:
        g = grad.detach().double().reshape(-1)
        return float(torch.linalg.vector_norm(g - self.exact) / torch.linalg.vector_norm(self.exact))


def _flat(grad: Params) -> Tensor:
    return torch.cat([v.reshape(-1) for v in grad.values()])


def scaled_ridge(
    p: int,
    *,
    n: int = 200,
    m: int = 200,
    groups: int = 1,
    lam: float = 0.03,
    T: int = 100,
    K: int = 20,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Ref:
    """Ridge with inner dimension ``p`` and ``groups`` penalties (module docstring)."""
    if not 1 <= groups <= p:
        raise ValueError(f"groups must be in [1, p={p}], got {groups}")
    gen = torch.Generator().manual_seed(seed)
    scale = 1.0 / (1.0 + math.sqrt(p / n))
    X = scale * torch.randn(n, p, generator=gen, dtype=torch.float64)
    Xv = scale * torch.randn(m, p, generator=gen, dtype=torch.float64)
    w_true = torch.randn(p, generator=gen, dtype=torch.float64) / math.sqrt(p) * 3
    y = X @ w_true + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    yv = Xv @ w_true + 0.1 * torch.randn(m, generator=gen, dtype=torch.float64)
    idx = torch.arange(p) * groups // p  # feature j -> its penalty's group
    lam0 = torch.full((groups,), lam, dtype=torch.float64)

    # Closed form (float64, Woodbury on the n x n system).
    d = lam0[idx]
    K_n = n * torch.eye(n, dtype=torch.float64) + (X / d) @ X.T
    chol = torch.linalg.cholesky(K_n)

    def h_inv(b: Tensor) -> Tensor:
        db = b / d
        return db - (X.T @ torch.cholesky_solve((X @ db).unsqueeze(1), chol).squeeze(1)) / d

    w_star = h_inv(X.T @ y / n)
    v = h_inv(Xv.T @ (Xv @ w_star - yv) / m)
    exact = torch.zeros(groups, dtype=torch.float64).index_add_(0, idx, -w_star * v)
    gram = torch.linalg.eigvalsh(X @ X.T / n)  # the nonzero spectrum of XᵀX/n
    L = float(lam0.max() + gram.max())
    mu = float(lam0.min() + (gram.min() if p <= n else 0.0))

    Xd, yd, Xvd, yvd, idx_d = X.to(dtype), y.to(dtype), Xv.to(dtype), yv.to(dtype), idx

    def inner_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        w = inner["w"]
        r = Xd @ w - yd
        lam_e = outer["lam"] if groups in (1, p) else outer["lam"][idx_d]  # (1,) broadcasts over w
        return 0.5 * (r @ r) / n + 0.5 * (lam_e * w * w).sum()

    def outer_loss(inner: Params, outer: Params, batch: Any = None) -> Tensor:
        r = Xvd @ inner["w"] - yvd
        return 0.5 * (r @ r) / m

    label = f"ridge p={p}" + (f", {groups} λ groups" if groups > 1 else "")
    return Ref(
        name=label,
        problem=BilevelProblem(inner_loss, outer_loss),
        inner_init={"w": torch.zeros(p, dtype=dtype)},
        outer={"lam": lam0.to(dtype)},
        exact=exact,
        L=L,
        mu=mu,
        T=T,
        S=T,
        K=K,
    )


def weighted_ridge(n: int = 1000, p: int = 100, T: int = 100, K: int = 20, seed: int = 0) -> Ref:
    """`bilevel.problems.weighted_ridge` (P4, data re-weighting): one logit per training row, float64."""
    ref = bproblems.weighted_ridge(n=n, m=n // 2, p=p, seed=seed)
    return Ref(
        name=f"weighted ridge n={n}, p={p}",
        problem=ref.problem,
        inner_init=dict(ref.inner_init),
        outer=dict(ref.outer),
        exact=_flat(ref.hypergrad(ref.outer)).double(),
        L=float(ref.L),
        mu=float(ref.mu),
        T=T,
        S=T,
        K=K,
    )


# ------------------------------------------------------------------------------------------- contestants


def ours(make_solver: Callable[[Ref], Any]) -> RefContestant:
    def make(r: Ref) -> Callable[[], Tensor]:
        solver = make_solver(r)

        def run() -> Tensor:
            if hasattr(solver, "reset"):
                solver.reset()
            return _flat(solver.hypergrad(r.problem, r.inner_init, r.outer).grad)

        return run

    return make


def _torchopt() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchopt
    return torchopt


def torchopt_custom_root(r: Ref) -> Callable[[], Tensor]:
    """torchopt ``custom_root`` + ``solve_cg(maxiter=K, rtol=0)`` around the same S gradient-descent steps
    (our `run_inner`, so the two differ only in how they compute the hypergradient at θ_S)."""
    torchopt = _torchopt()
    (okey,) = list(r.outer)
    ikeys = list(r.inner_init)
    problem, sgd = r.problem, optim.SGD(lr=r.lr)

    def g(inner: tuple[Tensor, ...], lam: Tensor) -> Tensor:
        return problem.inner_loss(dict(zip(ikeys, inner)), {okey: lam}, None)

    def optimality(inner: tuple[Tensor, ...], lam: Tensor) -> tuple[Tensor, ...]:
        return torch.func.grad(g)(inner, lam)

    @torchopt.diff.implicit.custom_root(
        optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=r.K, rtol=0.0)
    )
    def solver(inner: tuple[Tensor, ...], lam: Tensor) -> tuple[Tensor, ...]:
        theta, _ = run_inner(
            problem, sgd, dict(zip(ikeys, inner)), {okey: lam.detach()}, DataStream(None), start=0, stop=r.S
        )
        return tuple(theta[k] for k in ikeys)

    def run() -> Tensor:
        lam = r.outer[okey].detach().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            sol = solver(tuple(r.inner_init[k] for k in ikeys), lam)
            f = problem.outer_loss(dict(zip(ikeys, sol)), {okey: lam}, None)
            return torch.autograd.grad(f, lam)[0].reshape(-1)

    return run


class Holder(nn.Module):
    """The inner variables as an ``nn.Module`` (what `MetaSGD` and higher work on); ``forward`` is g or f."""

    def __init__(self, init: Params, problem: BilevelProblem) -> None:
        super().__init__()
        self.keys = list(init)
        for k, v in init.items():
            self.register_parameter(k, nn.Parameter(v.detach().clone()))
        self._problem = [problem]  # a list: not an attribute nn.Module would try to register

    def forward(self, outer: Params, which: str = "inner") -> Tensor:
        params = {k: getattr(self, k) for k in self.keys}
        p = self._problem[0]
        return p.inner_loss(params, outer, None) if which == "inner" else p.outer_loss(params, outer, None)


def torchopt_metasgd(r: Ref) -> Callable[[], Tensor]:
    torchopt = _torchopt()
    net = Holder(r.inner_init, r.problem)
    snapshot = torchopt.extract_state_dict(net)
    (okey,) = list(r.outer)

    def run() -> Tensor:
        torchopt.recover_state_dict(net, snapshot)
        mopt = torchopt.MetaSGD(net, lr=r.lr)
        lam = r.outer[okey].detach().requires_grad_(True)
        for _ in range(r.T):
            mopt.step(net({okey: lam}))
        return torch.autograd.grad(net({okey: lam}, "outer"), lam)[0].reshape(-1)

    return run


def higher_unrolled(r: Ref) -> Callable[[], Tensor]:
    import higher

    net = Holder(r.inner_init, r.problem)
    opt = torch.optim.SGD(net.parameters(), lr=r.lr)
    (okey,) = list(r.outer)

    def run() -> Tensor:
        lam = r.outer[okey].detach().requires_grad_(True)
        with higher.innerloop_ctx(net, opt, copy_initial_weights=True) as (fnet, diffopt):
            for _ in range(r.T):
                diffopt.step(fnet({okey: lam}))
            return torch.autograd.grad(fnet({okey: lam}, "outer"), lam)[0].reshape(-1)

    return run


def _sgd(r: Ref) -> Any:
    return optim.SGD(lr=r.lr)


OURS_IMPLICIT_REF = "ours Implicit CG(K)"
TORCHOPT_ROOT = "torchopt custom_root solve_cg(K)"
OURS_UNROLLED_REF = "ours Unrolled T"
DIRECT_MAX_DIM = 1000  # Direct materialises H with d_θ HVPs: feasible here up to p = 10³
FORWARD_MAX_OUTER = 16  # Forward: one tangent pass per outer entry


def ref_contestants(inner_dim: int, outer_dim: int) -> dict[str, RefContestant]:
    """The contestants that apply to a problem of these sizes: every solver of ours, torchopt custom_root
    and MetaSGD, higher (Direct up to ``DIRECT_MAX_DIM`` unknowns, Forward up to ``FORWARD_MAX_OUTER``)."""
    out: dict[str, RefContestant] = {
        OURS_IMPLICIT_REF: ours(
            lambda r: Implicit(_sgd(r), r.S, linear_solver=CG(max_iter=r.K, tol=0.0), warm_start=False)
        ),
        TORCHOPT_ROOT: torchopt_custom_root,
        "ours Implicit Neumann(K)": ours(
            lambda r: Implicit(
                _sgd(r), r.S, linear_solver=Neumann(alpha=r.lr, max_iter=r.K), warm_start=False
            )
        ),
    }
    if inner_dim <= DIRECT_MAX_DIM:
        out["ours Implicit Direct"] = ours(lambda r: Implicit(_sgd(r), r.S, linear_solver=Direct()))
    out[OURS_UNROLLED_REF] = ours(lambda r: Unrolled(_sgd(r), r.T))
    out["ours Unrolled T checkpoint"] = ours(lambda r: Unrolled(_sgd(r), r.T, checkpoint=True))
    out["ours Unrolled T truncate=K"] = ours(lambda r: Unrolled(_sgd(r), r.T, truncate=r.K))
    if outer_dim <= FORWARD_MAX_OUTER:
        out["ours Forward T"] = ours(lambda r: Forward(_sgd(r), r.T))
    out["ours FirstOrder identity"] = ours(lambda r: FirstOrder(_sgd(r), r.S, "identity", c=r.lr))
    out["torchopt MetaSGD T"] = torchopt_metasgd
    out["higher innerloop_ctx T"] = higher_unrolled
    return out


# Which contestants compute the same thing (asserted to agree before timing), by reference.
SAME_AS = {
    OURS_IMPLICIT_REF: TORCHOPT_ROOT,
    "torchopt MetaSGD T": OURS_UNROLLED_REF,
    "higher innerloop_ctx T": OURS_UNROLLED_REF,
    "ours Unrolled T checkpoint": OURS_UNROLLED_REF,
    "ours Forward T": OURS_UNROLLED_REF,
}
# Ours and torchopt's CG after K iterations agree to CG's rounding sensitivity; unrolls to the last digits.
SAME_TOLERANCE = {TORCHOPT_ROOT: 1e-8, OURS_UNROLLED_REF: 1e-10}


def describe(r: Ref) -> str:
    return (
        f"{r.name}: inner dim {r.inner_dim}, {r.outer_dim} outer entr{'y' if r.outer_dim == 1 else 'ies'}, "
        f"κ = L/μ = {r.L / r.mu:.1f}, lr = 1/L; T = {r.T} unrolled steps, S = {r.S} inner steps + K = {r.K} "
        "linear-solver iterations for implicit, float64"
    )


def copy_ref(r: Ref, **changes: Any) -> Ref:
    out = copy.copy(r)
    for k, v in changes.items():
        setattr(out, k, v)
    out.cache = {}
    return out
