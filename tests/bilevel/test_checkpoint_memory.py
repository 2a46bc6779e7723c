"""Checkpointed unrolling keeps sub-linear memory: the autograd graph alive at any time spans one segment.

Memory is measured without timers or allocator statistics: every tensor autograd saves for the backward pass
goes through `saved_tensors_hooks` into a holder that counts its bytes while it is alive.
"""

from __future__ import annotations

import torch

from bilevel import Unrolled, optim, problems

from .helpers import rel_err


class _Meter:
    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def pack(self, t: torch.Tensor):
        meter = self

        class Held:
            def __init__(self, x: torch.Tensor) -> None:
                self.x = x
                self.n = x.numel() * x.element_size()
                meter.live += self.n
                meter.peak = max(meter.peak, meter.live)

            def __del__(self) -> None:
                meter.live -= self.n

        return Held(t)

    @staticmethod
    def unpack(held):
        return held.x


def peak_saved_bytes(solver, ref):
    meter = _Meter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        hg = solver.hypergrad(ref.problem, ref.inner_init, ref.outer)
    return meter.peak, hg


def test_checkpointing_is_sublinear_in_steps_with_the_same_gradient():
    ref = problems.quadratic(seed=0, dx=4, dy=200)
    peaks = {}
    for T in (16, 64, 256):
        full_peak, full = peak_saved_bytes(Unrolled(optim.SGD(lr=0.5 / ref.L, momentum=0.5), steps=T), ref)
        ckpt_peak, ckpt = peak_saved_bytes(
            Unrolled(optim.SGD(lr=0.5 / ref.L, momentum=0.5), steps=T, checkpoint=True), ref
        )
        assert rel_err(ckpt.grad, full.grad) <= 1e-12
        peaks[T] = (full_peak, ckpt_peak)
    # full unrolling grows linearly in T; checkpointing like √T
    assert peaks[256][0] / peaks[16][0] > 12
    assert peaks[256][1] / peaks[16][1] < 6
    assert peaks[256][1] < peaks[256][0] / 8


def test_checkpointing_keeps_no_per_step_state_for_callable_data():
    """A random-access data stream is replayed by calling it again from the segment's saved RNG state, so
    nothing is stored per step (a CPU RNG state is ~5 KB: at T = 64 on a small problem, per-step states used
    to make the checkpointed peak *larger* than the full unroll's). Allocator peak from profiler events."""
    from bilevel import BilevelProblem
    from bilevel.profile import cpu_allocator_peak

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, dtype=torch.float64, generator=gen)
    y = torch.randn(200, dtype=torch.float64, generator=gen)

    def inner(th, o, idx):
        return ((x[idx] @ th["w"] - y[idx]) ** 2).mean() + (o["lam"] * th["w"] ** 2).sum()

    def outer(th, o, batch):
        return ((x @ th["w"] - y) ** 2).mean()

    problem = BilevelProblem(inner, outer)
    lam = {"lam": torch.full((10,), 0.1, dtype=torch.float64)}
    theta = {"w": torch.zeros(10, dtype=torch.float64)}

    def data(step):
        return torch.randint(0, 200, (32,))  # random mini-batches: replay must draw the same ones

    peaks, grads = {}, {}
    for ckpt in (False, True):
        solver = Unrolled(optim.SGD(lr=0.05), steps=64, checkpoint=ckpt)
        torch.manual_seed(1)
        grads[ckpt] = solver.hypergrad(problem, theta, lam, inner_data=data).grad["lam"]
        peak, kind = cpu_allocator_peak(lambda s=solver: s.hypergrad(problem, theta, lam, inner_data=data))
        if peak is None:
            import pytest

            pytest.skip(f"no allocator peak on this build: {kind}")
        peaks[ckpt] = peak
    assert float((grads[True] - grads[False]).norm() / grads[False].norm()) < 1e-12
    assert peaks[True] < 0.5 * peaks[False], peaks
