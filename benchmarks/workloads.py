"""The data re-weighting workload raced in the speed benchmarks, and every contestant's hypergradient.

Problem (the peer baseline of ``shared/reference/environment.md``; its losses are
`bilevel.problems.Reweighting`): sklearn's bundled digits, standardised; 1,200 training rows, the other 597
for validation; an MLP 64-128-10; one outer logit x_i per training row,

    g(θ, x) = (1/n) Σ_i σ(x_i) CE(f_θ(a_i), b_i) + (wd/2)‖θ‖²      (inner; wd = 0 for the unrolled race)
    f(θ, x) = (1/m) Σ_j CE(f_θ(a_j^val), b_j^val)                   (outer)

θ_T is T full-batch SGD steps (lr 0.1) from a seeded initialisation; every contestant returns the
hypergradient dF/dx as one tensor of shape (1200,). Contestants are *factories*: ``make(w) -> fn`` does the
set-up (copying modules, building optimizers) and ``fn()`` is the timed call.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bilevel import CG, BilevelProblem, FirstOrder, Forward, Implicit, Unrolled, optim, problems
from bilevel.tree import Params

DEVICE_ENV = "WORSTFORGET_BENCH_DEVICE"
Contestant = Callable[["Reweighting"], Callable[[], Tensor]]


def bench_device(name: str | None = None) -> torch.device:
    """``name``, else ``$WORSTFORGET_BENCH_DEVICE``, else cpu; a CUDA device must exist."""
    dev = torch.device(name or os.environ.get(DEVICE_ENV) or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"benchmark device {dev} requested but torch.cuda.is_available() is False")
    return dev


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA timings are otherwise the launch time only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ workload


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    return torch.as_tensor(data.data, dtype=torch.float64), torch.as_tensor(data.target, dtype=torch.long)


@dataclass
class Reweighting:
    """One instance of the workload: data, the module, θ_0 and the outer point x (all on ``device``).

    The losses are `bilevel.problems.Reweighting`'s (the one definition of the problem), on the module
    through ``torch.func.functional_call``, or (``manual``) on the same parameters through
    `bilevel.problems.mlp` (``F.linear`` per layer: the same operations, without functional_call's per-call
    re-parametrisation)."""

    net: nn.Module
    params0: Params
    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    logits: Tensor
    lr: float
    steps: int
    weight_decay: float
    device: torch.device
    dtype: torch.dtype
    damping: float = 0.05
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def on_module(params: Params, X: Tensor) -> Tensor:
            return functional_call(self.net, params, (X,))

        self.tasks = {
            manual: problems.Reweighting(
                self.X, self.y, self.Xv, self.yv, self.weight_decay, problems.mlp if manual else on_module
            )
            for manual in (False, True)
        }

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def model(self, params: Params, X: Tensor, manual: bool = False) -> Tensor:
        """The MLP on rows ``X``: through the module, or (``manual``) written out with ``F.linear``."""
        return self.tasks[manual].model(params, X)

    def inner_value(self, params: Params, logits: Tensor, manual: bool = False) -> Tensor:
        """g(θ, x) (shared by every contestant)."""
        return self.tasks[manual].inner_value(params, logits)

    def outer_value(self, params: Params, manual: bool = False) -> Tensor:
        return self.tasks[manual].outer_value(params)

    def make_problem(self, manual: bool = False) -> BilevelProblem:
        return self.tasks[manual].problem

    @property
    def problem(self) -> BilevelProblem:
        return self.make_problem()


def make_reweighting(
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n_train: int = 1200,
    hidden: int = 128,
    steps: int = 20,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    damping: float = 0.05,
    seed: int = 0,
) -> Reweighting:
    """The workload, deterministic under ``seed``."""
    device = torch.device(device)
    Xall, yall = _digits()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(Xall.shape[0], generator=gen)
    tr, va = perm[:n_train], perm[n_train:]
    mean, std = Xall[tr].mean(0), Xall[tr].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xall = (Xall - mean) / std
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(
        device=device, dtype=dtype
    )
    logits = (0.5 * torch.randn(n_train, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    return Reweighting(
        net=net,
        params0={k: p.detach().clone() for k, p in net.named_parameters()},
        X=Xall[tr].to(device=device, dtype=dtype),
        y=yall[tr].to(device),
        Xv=Xall[va].to(device=device, dtype=dtype),
        yv=yall[va].to(device),
        logits=logits,
        lr=lr,
        steps=steps,
        weight_decay=weight_decay,
        device=device,
        dtype=dtype,
        damping=damping,
    )


def solved_inner(w: Reweighting, steps: int = 300) -> Params:
    """θ ≈ argmin g(·, x): ``steps`` full-batch gradient steps (lr ``w.lr``) from θ_0, no graph.

    The implicit race starts every contestant here (``steps=0``), so it times the hypergradient alone.
    Computed once per workload instance.
    """
    key = f"solved_inner_{steps}"
    if key in w.cache:
        return w.cache[key]
    params = {k: v.clone() for k, v in w.params0.items()}
    x = w.logits.detach()
    for _ in range(steps):
        params = {k: v.requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(w.inner_value(params, x), list(params.values()))
        with torch.no_grad():
            params = {k: v - w.lr * g for (k, v), g in zip(params.items(), grads)}
    w.cache[key] = {k: v.detach() for k, v in params.items()}
    return w.cache[key]


# ------------------------------------------------------------------------------------- unrolled contestants


def ours_unrolled(checkpoint: bool = False, manual: bool = False) -> Contestant:
    def make(w: Reweighting) -> Callable[[], Tensor]:
        solver = Unrolled(optim.SGD(lr=w.lr), steps=w.steps, checkpoint=checkpoint)
        problem = w.make_problem(manual)

        def run() -> Tensor:
            return solver.hypergrad(problem, w.params0, {"x": w.logits}).grad["x"]

        return run

    return make


def higher_unrolled(w: Reweighting) -> Callable[[], Tensor]:
    import higher

    net = copy.deepcopy(w.net)
    opt = torch.optim.SGD(net.parameters(), lr=w.lr)

    def run() -> Tensor:
        x = w.logits.detach().requires_grad_(True)
        with higher.innerloop_ctx(net, opt, copy_initial_weights=True) as (fnet, diffopt):
            for _ in range(w.steps):
                ce = F.cross_entropy(fnet(w.X), w.y, reduction="none")
                diffopt.step((torch.sigmoid(x) * ce).sum() / w.n)
            outer = F.cross_entropy(fnet(w.Xv), w.yv)
            return torch.autograd.grad(outer, x)[0]

    return run


def _torchopt():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchopt
    return torchopt


def torchopt_metasgd(w: Reweighting) -> Callable[[], Tensor]:
    torchopt = _torchopt()
    net = copy.deepcopy(w.net)
    snapshot = torchopt.extract_state_dict(net)  # leaf parameters, by reference: "roll back" between calls

    def run() -> Tensor:
        torchopt.recover_state_dict(net, snapshot)
        mopt = torchopt.MetaSGD(net, lr=w.lr)
        x = w.logits.detach().requires_grad_(True)
        for _ in range(w.steps):
            ce = F.cross_entropy(net(w.X), w.y, reduction="none")
            mopt.step((torch.sigmoid(x) * ce).sum() / w.n)
        outer = F.cross_entropy(net(w.Xv), w.yv)
        return torch.autograd.grad(outer, x)[0]

    return run


def torchopt_functional(w: Reweighting) -> Callable[[], Tensor]:
    torchopt = _torchopt()
    keys = list(w.params0)
    opt = torchopt.sgd(lr=w.lr)

    def run() -> Tensor:
        x = w.logits.detach().requires_grad_(True)
        params = tuple(w.params0[k].detach().requires_grad_(True) for k in keys)
        state = opt.init(params)
        for _ in range(w.steps):
            loss = w.inner_value(dict(zip(keys, params)), x)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            updates, state = opt.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return torch.autograd.grad(w.outer_value(dict(zip(keys, params))), x)[0]

    return run


def plain_unrolled(w: Reweighting) -> Callable[[], Tensor]:
    """The hand-written reference: θ ← θ − lr ∇g with ``create_graph=True``, then one backward."""
    keys = list(w.params0)

    def run() -> Tensor:
        x = w.logits.detach().requires_grad_(True)
        params = [w.params0[k].detach().requires_grad_(True) for k in keys]
        for _ in range(w.steps):
            grads = torch.autograd.grad(w.inner_value(dict(zip(keys, params)), x), params, create_graph=True)
            params = [p - w.lr * g for p, g in zip(params, grads)]
        return torch.autograd.grad(w.outer_value(dict(zip(keys, params))), x)[0]

    return run


def forward_only(w: Reweighting) -> Callable[[], Tensor]:
    """The floor: the same T inner steps with no graph kept (what any unrolled method must also do)."""
    keys = list(w.params0)
    x = w.logits.detach()

    def run() -> Tensor:
        params = [w.params0[k].detach().requires_grad_(True) for k in keys]
        for _ in range(w.steps):
            grads = torch.autograd.grad(w.inner_value(dict(zip(keys, params)), x), params)
            with torch.no_grad():
                params = [(p - w.lr * g).requires_grad_(True) for p, g in zip(params, grads)]
        return params[0].detach()

    return run


def one_inner_gradient(w: Reweighting) -> Callable[[], Tensor]:
    """One ∇_θ g: the extra gradient `Unrolled` spends on its ``info["inner_grad_norm"]`` diagnostic."""
    keys = list(w.params0)
    x = w.logits.detach()

    def run() -> Tensor:
        params = [w.params0[k].detach().requires_grad_(True) for k in keys]
        return torch.autograd.grad(w.inner_value(dict(zip(keys, params)), x), params)[0]

    return run


UNROLLED: dict[str, Contestant] = {
    "ours Unrolled": ours_unrolled(),
    "ours Unrolled checkpoint": ours_unrolled(checkpoint=True),
    "ours Unrolled, F.linear loss (no functional_call)": ours_unrolled(manual=True),
    "higher innerloop_ctx": higher_unrolled,
    "torchopt MetaSGD": torchopt_metasgd,
    "torchopt sgd+apply_updates": torchopt_functional,
    "plain autograd unroll": plain_unrolled,
}


def ours_inner_loop(w: Reweighting) -> Callable[[], Tensor]:
    """Our inner loop without a graph (`bilevel.inner.run_inner`, what `Implicit`/`FirstOrder` run first):
    the same T steps as ``forward_only``, so the ratio of the two is our per-step bookkeeping."""
    from bilevel.inner import run_inner
    from bilevel.problem import DataStream

    problem, sgd = w.problem, optim.SGD(lr=w.lr)
    outer = {"x": w.logits}

    def run() -> Tensor:
        theta, _ = run_inner(problem, sgd, w.params0, outer, DataStream(None), start=0, stop=w.steps)
        return theta["0.weight"]

    return run


UNROLLED_FLOORS: dict[str, Contestant] = {
    "forward inner loop (no graph)": forward_only,
    "ours inner loop (run_inner, no graph)": ours_inner_loop,
    "one inner gradient": one_inner_gradient,
}
REFERENCE_UNROLLED = "plain autograd unroll"


# ------------------------------------------------------------------------------------- implicit contestants


# The MLP's Hessian at θ (300 steps) is indefinite: every contestant solves the damped system
# (H + δI) v = ∂_θ f with δ = ``w.damping`` (ours: CG(damping=δ); torchopt: the optimality function
# ∇_θ g + δ(θ − θ̄), whose Jacobian is H + δI at θ̄ = θ). δ = 0.05 keeps the 20 CG iterations meaningful
# (relative residual ~1e-4 after 20).
CG_ITERS = 20


def ours_implicit(solver_factory: Callable[[Reweighting], Any]) -> Contestant:
    def make(w: Reweighting) -> Callable[[], Tensor]:
        theta = solved_inner(w)
        problem = w.problem
        solver = solver_factory(w)

        def run() -> Tensor:
            if hasattr(solver, "reset"):
                solver.reset()  # no warm start: every call solves the linear system from zero
            return solver.hypergrad(problem, theta, {"x": w.logits}).grad["x"]

        return run

    return make


def torchopt_custom_root(normal: bool = False, maxiter: int = CG_ITERS) -> Contestant:
    def make(w: Reweighting) -> Callable[[], Tensor]:
        torchopt = _torchopt()
        theta = solved_inner(w)
        keys = list(theta)
        ls = torchopt.linear_solve
        # rtol=0: exactly ``maxiter`` iterations, as ours with CG(tol=0).
        solve = (
            ls.solve_normal_cg(maxiter=maxiter, rtol=0.0)
            if normal
            else ls.solve_cg(maxiter=maxiter, rtol=0.0)
        )

        def optimality(params: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, ...]:
            def g(ps: tuple[Tensor, ...]) -> Tensor:
                return w.inner_value(dict(zip(keys, ps)), x)

            grads = torch.func.grad(g)(params)
            return tuple(gr + w.damping * (p - theta[k]) for gr, p, k in zip(grads, params, keys))

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def inner_solver(params: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, ...]:
            return tuple(theta[k] for k in keys)  # already solved: isolates the hypergradient

        def run() -> Tensor:
            x = w.logits.detach().requires_grad_(True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torchopt's functorch deprecation
                sol = inner_solver(tuple(theta[k] for k in keys), x)
                return torch.autograd.grad(w.outer_value(dict(zip(keys, sol))), x)[0]

        return run

    return make


def _ours_cg(hvp: str) -> Contestant:
    return ours_implicit(
        lambda w: Implicit(
            optim.SGD(lr=w.lr),
            steps=0,
            linear_solver=CG(max_iter=CG_ITERS, tol=0.0, damping=w.damping),
            hvp=hvp,
        )
    )


IMPLICIT: dict[str, Contestant] = {
    "ours Implicit CG20 reverse-HVP": _ours_cg("reverse"),
    "ours Implicit CG20 forward-HVP": _ours_cg("forward"),
    "torchopt custom_root solve_cg(20)": torchopt_custom_root(),
    "torchopt custom_root solve_normal_cg(20) [default solver]": torchopt_custom_root(normal=True),
    "ours FirstOrder identity": ours_implicit(lambda w: FirstOrder(mode="identity", c=w.lr)),
    "ours FirstOrder partial": ours_implicit(lambda w: FirstOrder(mode="partial")),
}
REFERENCE_IMPLICIT = "torchopt custom_root solve_cg(20)"


# ------------------------------------------------------------------------------ learned learning rate (3)


# The workload-1 data and MLP with one outer entry, the inner SGD learning rate η (a 0-dim tensor):
#     g(θ) = (1/n) Σ_i CE(f_θ(a_i), b_i)   (unweighted; η enters through the steps θ ← θ − η ∇g only)
#     f(θ) = validation CE,   F(η) = f(θ_T(η)),   every contestant returns dF/dη (0-dim).
# T is longer than workload 1's: long trajectories and few outer entries are what `Forward` is for. 50
# keeps the workload (agreement, memory, 25 interleaved + 16 timed rounds of 6 contestants) near a minute
# on the 2-core CPU with one thread.
LR_STEPS = 50


def make_learned_lr(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Reweighting:
    """Workload 1's data, module and θ_0 with ``steps = LR_STEPS``; ``w.lr`` is the point η where dF/dη is
    taken (``w.logits`` is unused)."""
    return make_reweighting(device=device, dtype=dtype, steps=LR_STEPS)


def _lr0(w: Reweighting) -> Tensor:
    return torch.tensor(w.lr, device=w.device, dtype=w.dtype)


def lr_problem(w: Reweighting) -> BilevelProblem:
    return BilevelProblem(
        inner_loss=lambda inner, outer, batch: F.cross_entropy(w.model(inner, w.X), w.y),
        outer_loss=lambda inner, outer, batch: w.outer_value(inner),
    )


def ours_lr(solver_cls: Any, **kwargs: Any) -> Contestant:
    def make(w: Reweighting) -> Callable[[], Tensor]:
        solver = solver_cls(lambda outer: optim.SGD(lr=outer["lr"]), w.steps, **kwargs)
        problem, lr = lr_problem(w), _lr0(w)

        def run() -> Tensor:
            return solver.hypergrad(problem, w.params0, {"lr": lr}).grad["lr"]

        return run

    return make


def higher_lr(w: Reweighting) -> Callable[[], Tensor]:
    import higher

    net = copy.deepcopy(w.net)
    opt = torch.optim.SGD(net.parameters(), lr=w.lr)

    def run() -> Tensor:
        lr = _lr0(w).requires_grad_(True)
        # override: one value per parameter group; the differentiable optimizer uses the tensor as is.
        with higher.innerloop_ctx(net, opt, copy_initial_weights=True, override={"lr": [lr]}) as (fnet, d):
            for _ in range(w.steps):
                d.step(F.cross_entropy(fnet(w.X), w.y))
            return torch.autograd.grad(F.cross_entropy(fnet(w.Xv), w.yv), lr)[0]

    return run


def torchopt_metasgd_lr(w: Reweighting) -> Callable[[], Tensor]:
    """``MetaSGD(net, lr=tensor)``: torchopt 0.7.3 accepts a tensor learning rate and differentiates it
    (its ``lr >= 0`` check and the ``-lr`` scaling are tensor operations)."""
    torchopt = _torchopt()
    net = copy.deepcopy(w.net)
    snapshot = torchopt.extract_state_dict(net)

    def run() -> Tensor:
        torchopt.recover_state_dict(net, snapshot)
        lr = _lr0(w).requires_grad_(True)
        mopt = torchopt.MetaSGD(net, lr=lr)
        for _ in range(w.steps):
            mopt.step(F.cross_entropy(net(w.X), w.y))
        return torch.autograd.grad(F.cross_entropy(net(w.Xv), w.yv), lr)[0]

    return run


def plain_lr(w: Reweighting) -> Callable[[], Tensor]:
    """The hand-written reference: θ ← θ − η ∇g with ``create_graph=True``, then one backward to η."""
    keys = list(w.params0)

    def run() -> Tensor:
        lr = _lr0(w).requires_grad_(True)
        params = [w.params0[k].detach().requires_grad_(True) for k in keys]
        for _ in range(w.steps):
            loss = F.cross_entropy(w.model(dict(zip(keys, params)), w.X), w.y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            params = [p - lr * g for p, g in zip(params, grads)]
        return torch.autograd.grad(w.outer_value(dict(zip(keys, params))), lr)[0]

    return run


LEARNED_LR: dict[str, Contestant] = {
    "ours Unrolled": ours_lr(Unrolled),
    "ours Unrolled checkpoint": ours_lr(Unrolled, checkpoint=True),
    "ours Forward (forward-mode unroll)": ours_lr(Forward),
    "higher innerloop_ctx override lr": higher_lr,
    "torchopt MetaSGD(lr=tensor)": torchopt_metasgd_lr,
    "plain autograd unroll": plain_lr,
}
REFERENCE_LEARNED_LR = "plain autograd unroll"
# dF/dη is one number reached through T steps: rounding accumulates along the trajectory, and forward mode
# accumulates it in a different order from reverse mode.
LR_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


# ------------------------------------------------------------------------------------------ measurements


def relative_error(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a64 - b64) / torch.linalg.vector_norm(b64).clamp_min(1e-300))


def agreement_tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-6


class _Saved:
    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: tuple[Any, ...] | None, tensor: Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class SavedTensorMeter:
    """Bytes the autograd graph holds: every tensor saved for backward (``saved_tensors_hooks``), counted
    once per distinct storage (data saved by all T steps counts once), tracked as it is freed.

    ``peak``: the most bytes alive at once (what decides whether an unroll fits in memory);
    ``total``: bytes of all saves, counting a storage each time it is saved again after being freed.
    """

    def __init__(self) -> None:
        self.live: dict[tuple[Any, ...], list[int]] = {}
        self.current = self.peak = self.total = 0

    def _pack(self, t: Tensor) -> _Saved:
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = (str(t.device), storage.data_ptr()) if nbytes and storage.data_ptr() else None
        if key is not None:
            entry = self.live.get(key)
            if entry is None:
                self.live[key] = [1, nbytes]
                self.current += nbytes
                self.total += nbytes
                self.peak = max(self.peak, self.current)
            else:
                entry[0] += 1
        return _Saved(self, key, t)

    def _release(self, key: tuple[Any, ...]) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]

    @staticmethod
    def _unpack(saved: _Saved) -> Tensor:
        return saved.tensor

    def measure(self, fn: Callable[[], Any]) -> dict[str, int]:
        """Run ``fn`` once under the hooks; returns ``{"peak_saved_bytes", "total_saved_bytes"}``."""
        self.live.clear()
        self.current = self.peak = self.total = 0
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            out = fn()
        del out
        return {"peak_saved_bytes": self.peak, "total_saved_bytes": self.total}


def measure_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Saved-tensor bytes of one call, plus the CUDA allocator's peak above the start on a GPU.

    ``torch.func`` transforms refuse saved-tensor hooks (torch 2.13: "don't yet support saved tensor
    hooks"); such a call gets ``memory_note`` instead of byte counts.
    """
    out: dict[str, Any]
    try:
        out = SavedTensorMeter().measure(fn)
    except RuntimeError as exc:
        if "saved tensor hooks" not in str(exc):
            raise
        out = {"memory_note": "n/a: uses torch.func transforms, which refuse saved-tensor hooks"}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = cuda_peak(fn, device)
    return out


def cuda_peak(fn: Callable[[], Any], device: torch.device) -> int:
    """The CUDA allocator's peak bytes during one call, above its level at the start."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def cpu_allocator_peak(fn: Callable[[], Any]) -> dict[str, Any]:
    """`bilevel.profile.cpu_allocator_peak` (peak bytes of torch's CPU allocator during one call, from the
    profiler's memory events; it meters everything, `Forward`'s dual tensors included) as the benchmark's
    info keys: ``cpu_alloc_peak_bytes``, or ``cpu_alloc_note`` when the events are unavailable."""
    import importlib

    peak, kind = importlib.import_module("bilevel.profile").cpu_allocator_peak(fn)
    return {"cpu_alloc_note": f"n/a: {kind}"} if peak is None else {"cpu_alloc_peak_bytes": peak}
