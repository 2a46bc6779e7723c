"""The capturable path (`bilevel.graphed`, `bilevel.batched`, `minimize(graph=...)`) on CPU: no host
synchronisation during the call, results equal to the eager solvers, clear errors for what cannot be
captured. (The CUDA capture itself is checked by benchmarks/gpu_check.sh on a GPU.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

from bilevel import (
    CG,
    BilevelProblem,
    Direct,
    FirstOrder,
    Forward,
    Implicit,
    IndefiniteHessianError,
    Neumann,
    Unrolled,
    batched,
    graphed,
    minimize,
    optim,
    problems,
)

SYNC = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy")


@contextlib.contextmanager
def no_host_sync():
    """Every way of reading a tensor's value on the host raises inside this block."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNC}

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation inside the capturable path")

    for name in SYNC:
        setattr(torch.Tensor, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def _solvers(L: float) -> dict:
    sgd = optim.SGD(lr=1.0 / L, momentum=0.5)
    return {
        "unrolled": Unrolled(sgd, 30),
        "truncated": Unrolled(sgd, 30, truncate=7),
        "unrolled-adam": Unrolled(optim.Adam(lr=0.01), 20),
        "implicit-cg": Implicit(sgd, 30, CG(max_iter=8, tol=0.0), warm_start=False),
        "implicit-neumann": Implicit(sgd, 30, Neumann(max_iter=8), warm_start=False),
        "implicit-neumann-alpha": Implicit(sgd, 30, Neumann(alpha=0.1, max_iter=8), warm_start=False),
        "partial": FirstOrder(sgd, 30, mode="partial"),
        "identity": FirstOrder(sgd, 30, mode="identity", c=0.3),
        "f2sa": FirstOrder(sgd, 30, mode="f2sa", sigma=50.0),
    }


@pytest.mark.parametrize("name", list(_solvers(1.0)))
def test_graphed_performs_no_host_sync_and_equals_eager_in_float64(name):
    ref = problems.ridge(seed=0)
    solver = _solvers(ref.L)[name]
    eager = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    hg = graphed(solver, ref.problem, ref.inner_init, ref.outer)
    with no_host_sync():
        got = hg(ref.outer, check=False)
    hg.raise_if_failed()
    for k in eager.grad:
        assert torch.equal(got.grad[k], eager.grad[k])
    for k in eager.inner:
        assert torch.equal(got.inner[k], eager.inner[k])
    assert float(got.info["outer_loss"]) == eager.info["outer_loss"]
    assert float(got.info["inner_grad_norm"]) == eager.info["inner_grad_norm"]
    assert float(got.info["inner_loss"]) == eager.info["inner_loss"]
    moved = {k: v + 0.1 for k, v in ref.outer.items()}  # a second call on new values: the buffers refill
    again = hg(moved)
    expected = solver.hypergrad(ref.problem, ref.inner_init, moved)
    assert all(torch.equal(again.grad[k], expected.grad[k]) for k in expected.grad)


@pytest.mark.parametrize("name", ["unrolled", "implicit-cg", "identity"])
def test_graphed_equals_eager_in_float32(name):
    ref = problems.ridge(seed=0, dtype=torch.float32)
    solver = _solvers(ref.L)[name]
    eager = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    got = graphed(solver, ref.problem, ref.inner_init, ref.outer)(ref.outer)
    for k in eager.grad:
        torch.testing.assert_close(got.grad[k], eager.grad[k], rtol=1e-6, atol=1e-6)


def _regression(B: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = () if B is None else (B,)
    X = torch.randn(*shape, 30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(*shape, 30, generator=g, dtype=torch.float64)

    def inner_loss(inner, outer, batch):
        Xb, yb = batch
        return ((Xb @ inner["w"] - yb) ** 2).mean() + outer["lam"].exp() * (inner["w"] ** 2).sum()

    def outer_loss(inner, outer, batch):
        Xb, yb = batch
        return ((Xb @ inner["w"] - yb + 0.1) ** 2).mean() + 0.01 * outer["lam"] ** 2

    return BilevelProblem(inner_loss, outer_loss), X, y, g


def test_graphed_learned_lr_maml_init_and_refilled_batches():
    problem, X, y, _ = _regression()
    outer = {
        "lam": torch.tensor(-1.0, dtype=torch.float64),
        "lr": torch.tensor(0.05, dtype=torch.float64),
        "w0": torch.zeros(4, dtype=torch.float64),
    }
    batches = [(X[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10)]
    solver = Unrolled(lambda o: optim.SGD(lr=o["lr"]), 9)
    hg = graphed(solver, problem, {"w": outer["w0"]}, outer, inner_data=batches, outer_data=[(X, y)])
    for shift in (0.0, 0.3):
        new = {k: v + shift for k, v in outer.items()}
        flipped = [(a.flip(0), b.flip(0)) for a, b in batches] if shift else batches
        eager = solver.hypergrad(problem, {"w": new["w0"]}, new, inner_data=flipped, outer_data=[(X, y)])
        got = hg(new, inner_data=flipped)
        assert all(torch.equal(got.grad[k], eager.grad[k]) for k in eager.grad)
        assert float(got.grad["w0"].abs().sum()) > 0 and float(got.grad["lr"].abs()) > 0


def test_graphed_refuses_what_cannot_be_captured():
    problem, X, y, _ = _regression()
    inner, outer = {"w": torch.zeros(4, dtype=torch.float64)}, {"lam": torch.tensor(0.0, dtype=torch.float64)}
    sgd = optim.SGD(lr=0.05)
    batches = [(X[:10], y[:10])]
    with pytest.raises(TypeError, match=r"inner_data is a callable.*frozen into the graph"):
        graphed(Unrolled(sgd, 3), problem, inner, outer, inner_data=lambda t: batches[0], outer_data=batches)
    with pytest.raises(TypeError, match=r"must be None or a list of batches"):
        graphed(Unrolled(sgd, 3), problem, inner, outer, inner_data=iter(batches), outer_data=batches)
    for solver, why in (
        (Unrolled(sgd, 3, checkpoint=True), "checkpoint=True"),
        (Implicit(sgd, 3), "warm_start=False"),
        (Implicit(sgd, 3, Direct(), warm_start=False), "Direct"),
        (Forward(sgd, 3), "Forward has no capturable path"),
    ):
        with pytest.raises(ValueError, match=why):
            graphed(solver, problem, inner, outer, inner_data=batches, outer_data=batches)
    hg = graphed(Unrolled(sgd, 3), problem, inner, outer, inner_data=batches, outer_data=batches)
    with pytest.raises(
        ValueError, match=r"inner_data\[0\] \(leaf 0\) has shape .*cannot change between calls"
    ):
        hg(outer, inner_data=[(X[:5], y[:5])])
    with pytest.raises(ValueError, match=r"outer\['lam'\] has dtype torch.float32"):
        hg({"lam": torch.tensor(0.0)})
    with pytest.raises(ValueError, match=r"keys \['lam'\]"):
        hg({"mu": torch.tensor(0.0, dtype=torch.float64)})


def test_graphed_checks_become_errors_after_the_call():
    ref = problems.quadratic(seed=0, dx=3, dy=5)
    hg = graphed(Unrolled(optim.SGD(lr=100.0), 50), ref.problem, ref.inner_init, ref.outer)
    with pytest.raises(FloatingPointError, match="runaway growth: the inner solution after 50 steps"):
        hg(ref.outer)
    nan = {k: v * float("nan") for k, v in ref.outer.items()}
    with pytest.raises(FloatingPointError, match=r"NaN or Inf in outer \(the outer variable passed in\)"):
        hg(nan)
    saddle = problems.saddle() if hasattr(problems, "saddle") else None
    if saddle is not None:
        solver = Implicit(optim.SGD(lr=0.01), 0, CG(max_iter=5, tol=0.0), warm_start=False)
        with pytest.raises(IndefiniteHessianError):
            graphed(solver, saddle.problem, saddle.inner_init, saddle.outer)(saddle.outer)


@pytest.mark.parametrize(
    "solver",
    [
        Unrolled(optim.SGD(lr=0.1, momentum=0.5), 15),
        Unrolled(optim.SGD(lr=0.1, momentum=0.5), 15, truncate=4),
        Unrolled(optim.Adam(lr=0.05), 10),
        Unrolled(lambda o: optim.SGD(lr=o["lr"]), 10),
        Implicit(optim.SGD(lr=0.1), 15, CG(max_iter=5, tol=0.0), warm_start=False),
        FirstOrder(optim.SGD(lr=0.1), 15, mode="partial"),
    ],
    ids=["unrolled", "truncated", "adam", "learned-lr", "implicit-cg", "partial"],
)
def test_batched_equals_a_loop_over_tasks_and_combines_with_graphed(solver):
    B = 4
    problem, X, y, g = _regression(B)
    inner = {"w": torch.randn(B, 4, generator=g, dtype=torch.float64)}
    outer = {
        "lam": 0.1 * torch.randn(B, generator=g, dtype=torch.float64),
        "lr": torch.full((B,), 0.1).double(),
    }
    data = dict(inner_data=[(X, y)], outer_data=[(X, y)])
    many = batched(solver).hypergrad(problem, inner, outer, **data)
    for b in range(B):
        one = solver.hypergrad(
            problem,
            {"w": inner["w"][b]},
            {k: v[b] for k, v in outer.items()},
            inner_data=[(X[b], y[b])],
            outer_data=[(X[b], y[b])],
        )
        for k in one.grad:
            torch.testing.assert_close(many.grad[k][b], one.grad[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(many.inner["w"][b], one.inner["w"], rtol=1e-10, atol=1e-12)
        assert float(many.info["outer_loss"][b]) == pytest.approx(one.info["outer_loss"], rel=1e-10)
        assert float(many.info["inner_grad_norm"][b]) == pytest.approx(one.info["inner_grad_norm"], rel=1e-8)
    hg = graphed(batched(solver), problem, inner, outer, **data)
    with no_host_sync():
        got = hg(outer, check=False)
    hg.raise_if_failed()
    assert all(torch.equal(got.grad[k], many.grad[k]) for k in many.grad)


def test_batched_refusals():
    with pytest.raises(ValueError, match="checkpoint=False"):
        batched(Unrolled(optim.SGD(lr=0.1), 3, checkpoint=True))
    with pytest.raises(ValueError, match="mode 'partial' only"):
        batched(FirstOrder(optim.SGD(lr=0.1), 3, mode="identity"))
    with pytest.raises(ValueError, match="warm_start=False"):
        batched(Implicit(optim.SGD(lr=0.1), 3))
    problem, X, y, _ = _regression(3)
    with pytest.raises(ValueError, match="same leading task axis"):
        batched(Unrolled(optim.SGD(lr=0.1), 3)).hypergrad(
            problem,
            {"w": torch.zeros(3, 4).double()},
            {"lam": torch.zeros(2).double()},
            inner_data=[(X, y)],
            outer_data=[(X, y)],
        )


@pytest.mark.parametrize("solver", ["unrolled", "implicit-cg", "partial"])
def test_minimize_graphed_equals_eager_with_streamed_mini_batches(solver):
    ref = problems.ridge(seed=0)
    s = _solvers(ref.L)[solver]
    gen = torch.Generator().manual_seed(1)
    n = ref.data["X"].shape[0]
    stream = [torch.randperm(n, generator=gen)[:16] for _ in range(200)]
    X, y = ref.data["X"], ref.data["y"]
    problem = BilevelProblem(
        lambda i, o, idx: ref.problem.inner_loss(i, o, (X[idx], y[idx])), ref.problem.outer_loss
    )
    runs = [
        minimize(
            problem,
            s,
            ref.outer,
            optim.Adam(lr=0.05),
            4,
            inner_init=ref.inner_init,
            inner_data=stream,
            graph=graph,
        )
        for graph in (False, True)
    ]
    assert all(torch.equal(runs[0].outer[k], runs[1].outer[k]) for k in ref.outer)
    assert [h["outer_loss"] for h in runs[0].history] == [h["outer_loss"] for h in runs[1].history]
    assert isinstance(runs[1].history[0]["info"]["inner_grad_norm"], float)
    with pytest.raises(ValueError, match="minimize\\(graph=True\\): .*checkpoint"):
        minimize(
            problem,
            Unrolled(optim.SGD(lr=0.1), 3, checkpoint=True),
            ref.outer,
            optim.SGD(lr=0.1),
            1,
            inner_init=ref.inner_init,
            graph=True,
        )


def test_minimize_graphed_keeps_one_graph_per_batch_shape_and_falls_back_when_capture_fails(monkeypatch):
    """A short last mini-batch gets its own static buffers (not an error); with the default graph=None a
    failed capture warns and the run continues eagerly with the same numbers."""
    import bilevel.outer_loop as outer_loop
    from bilevel.graphed import GraphCaptureError, Graphed

    ref = problems.ridge(seed=0)
    X, y = ref.data["X"], ref.data["y"]
    sizes = [16, 16, 8] * 20  # an epoch of 40 rows in batches of 16: the third is short
    gen = torch.Generator().manual_seed(2)
    stream = [torch.randperm(X.shape[0], generator=gen)[:s] for s in sizes]
    problem = BilevelProblem(
        lambda i, o, idx: ref.problem.inner_loss(i, o, (X[idx], y[idx])), ref.problem.outer_loss
    )
    solver = Unrolled(optim.SGD(lr=1.0 / ref.L), 2)  # 3 batches per call: every shape pattern occurs
    runs = [
        minimize(
            problem,
            solver,
            ref.outer,
            optim.Adam(lr=0.05),
            4,
            inner_init=ref.inner_init,
            inner_data=stream,
            graph=graph,
        )
        for graph in (False, True)
    ]
    assert all(torch.equal(runs[0].outer[k], runs[1].outer[k]) for k in ref.outer)

    def fail(self, *args, **kwargs):
        raise GraphCaptureError("graphed(): the CUDA graph capture failed (simulated)")

    monkeypatch.setattr(Graphed, "__call__", fail)
    monkeypatch.setattr(outer_loop, "_use_graph", lambda graph, solver, outer: True)
    with pytest.warns(UserWarning, match="capture failed .*minimize continues eagerly"):
        fallback = minimize(
            problem, solver, ref.outer, optim.Adam(lr=0.05), 4, inner_init=ref.inner_init, inner_data=stream
        )
    assert all(torch.equal(runs[0].outer[k], fallback.outer[k]) for k in ref.outer)
    with pytest.raises(GraphCaptureError):
        minimize(
            problem,
            solver,
            ref.outer,
            optim.Adam(lr=0.05),
            1,
            inner_init=ref.inner_init,
            inner_data=stream,
            graph=True,
        )
