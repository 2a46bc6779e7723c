"""Capture check on CUDA (benchmarks/gpu_check.sh, step 1): every capturable configuration is captured as a
CUDA graph, replayed on new inputs, and equals the eager solver (float64 to 1e-12, float32 to 1e-5); the
failure flags work after a replay; minimize(graph=None) picks the graph on CUDA. Prints one line per case
and exits non-zero on the first mismatch."""

from __future__ import annotations

import sys

import torch

from bilevel import CG, FirstOrder, Implicit, Neumann, Unrolled, batched, graphed, minimize, optim, problems


def solvers(L: float) -> dict:
    sgd = optim.SGD(lr=1.0 / L, momentum=0.5)
    return {
        "Unrolled": Unrolled(sgd, 30),
        "Unrolled truncate=7": Unrolled(sgd, 30, truncate=7),
        "Unrolled Adam": Unrolled(optim.Adam(lr=0.01), 20),
        "Implicit CG(8, tol=0)": Implicit(sgd, 30, CG(max_iter=8, tol=0.0), warm_start=False),
        "Implicit Neumann(8)": Implicit(sgd, 30, Neumann(max_iter=8), warm_start=False),
        "FirstOrder partial": FirstOrder(sgd, 30, mode="partial"),
        "FirstOrder identity": FirstOrder(sgd, 30, mode="identity", c=0.3),
        "FirstOrder f2sa": FirstOrder(sgd, 30, mode="f2sa", sigma=50.0),
    }


def check(dtype: torch.dtype, tol: float) -> None:
    ref = problems.quadratic(seed=0, dx=4, dy=6, dtype=dtype, device="cuda")
    for name, solver in solvers(ref.L).items():
        hg = graphed(solver, ref.problem, ref.inner_init, ref.outer)
        for shift in (0.0, 0.05, 0.1):
            outer = {k: v + shift for k, v in ref.outer.items()}
            eager = solver.hypergrad(ref.problem, ref.inner_init, outer)
            got = hg(outer)
            err = max(
                float((got.grad[k] - eager.grad[k]).norm() / eager.grad[k].norm().clamp_min(1e-30))
                for k in eager.grad
            )
            if not (hg.captured and err <= tol):
                print(f"FAIL {name} {dtype}: captured={hg.captured} rel.err={err:.2e}")
                sys.exit(1)
        print(f"ok   {name:24s} {str(dtype):14s} captured, 3 replays, rel.err {err:.1e}")


def main() -> None:
    torch.manual_seed(0)
    check(torch.float64, 1e-12)
    check(torch.float32, 1e-5)
    q = problems.quadratic(seed=0, dx=3, dy=5, device="cuda")
    hg = graphed(Unrolled(optim.SGD(lr=100.0), 50), q.problem, q.inner_init, q.outer)
    try:
        hg(q.outer)
        print("FAIL the runaway run was not flagged after replay")
        sys.exit(1)
    except FloatingPointError as exc:
        print(f"ok   flags after replay: {str(exc)[:70]}...")
    ref = problems.quadratic(seed=0, dx=4, dy=6, device="cuda")
    solver = Unrolled(optim.SGD(lr=1.0 / ref.L), 10)
    runs = [
        minimize(ref.problem, solver, ref.outer, optim.Adam(lr=0.05), 5, inner_init=ref.inner_init, graph=g)
        for g in (False, None)
    ]
    same = all(torch.allclose(runs[0].outer[k], runs[1].outer[k], rtol=1e-12) for k in ref.outer)
    print(("ok  " if same else "FAIL") + " minimize graph=None (graphed on CUDA) equals graph=False")
    B = 4
    inner = {k: v.expand(B, *v.shape).clone() for k, v in ref.inner_init.items()}
    outer = {k: v.expand(B, *v.shape).clone() for k, v in ref.outer.items()}
    many = graphed(batched(solver), ref.problem, inner, outer)(outer)
    one = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    ok = all(torch.allclose(many.grad[k][0], one.grad[k], rtol=1e-10) for k in one.grad)
    print(("ok  " if ok else "FAIL") + " graphed(batched(Unrolled)) on CUDA equals the loop")
    if not (same and ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
