"""Options, machine description and the per-workload set-up (agreement checks, memory, interleaved race).

Options (after ``pytest benchmarks``; with ``make bench`` pass them as ``ARGS="..."``):

- ``--device``: ``cpu`` (default), ``cuda``, ``cuda:1``…; default ``$WORSTFORGET_BENCH_DEVICE``.
- ``--threads``: ``torch.set_num_threads``; default ``$WORSTFORGET_BENCH_THREADS``, else torch's default.
- ``--race-rounds``: interleaved rounds per contestant (default 25).
- ``--bench-rounds``: pytest-benchmark rounds per contestant (default 15, after one warm-up round).
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from .race import race
from .workloads import (
    DEVICE_ENV,
    IMPLICIT,
    LEARNED_LR,
    LR_STEPS,
    LR_TOLERANCE,
    REFERENCE_IMPLICIT,
    REFERENCE_LEARNED_LR,
    REFERENCE_UNROLLED,
    UNROLLED,
    UNROLLED_FLOORS,
    agreement_tolerance,
    bench_device,
    cpu_allocator_peak,
    cpu_model,
    make_learned_lr,
    make_reweighting,
    measure_memory,
    relative_error,
)

THREADS_ENV = "WORSTFORGET_BENCH_THREADS"
UNROLLED_GROUP = "unrolled: data re-weighting, digits, MLP 64-128-10, 1,200 weights, T=20 SGD steps"
IMPLICIT_GROUP = "implicit: same problem, inner solved once (steps=0), 20 CG iterations on (H + 0.05 I)"
LEARNED_LR_GROUP = (
    f"learned learning rate: same data and MLP, one outer entry (the inner SGD lr), unweighted CE, "
    f"T={LR_STEPS} SGD steps"
)
OURS_UNROLLED = "ours Unrolled"
OURS_IMPLICIT = "ours Implicit CG20 reverse-HVP"
FORWARD_FLOOR = "forward inner loop (no graph)"
# CG amplifies rounding: two correct implementations of 20 CG iterations on a system of condition ~1e3 agree
# to ~1e-9 (float64) and ~1e-5 (float32), not to the last digits. Their *converged* solutions (δ = 0.3,
# residual ~1e-15) must agree to the usual 1e-10, which the float64 twin checks.
CG_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
CONVERGED_DAMPING = 0.3


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("worstforget benchmarks")
    group.addoption("--device", default=None, help=f"torch device (default ${DEVICE_ENV} or cpu)")
    group.addoption("--threads", type=int, default=None, help=f"torch threads (default ${THREADS_ENV})")
    group.addoption("--race-rounds", type=int, default=25, help="interleaved rounds per contestant")
    group.addoption("--bench-rounds", type=int, default=15, help="pytest-benchmark rounds per contestant")


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--threads") or os.environ.get(THREADS_ENV)
    if threads:
        torch.set_num_threads(int(threads))
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="We've integrated functorch", category=FutureWarning)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    import importlib.metadata as md

    device = bench_device(config.getoption("--device"))
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
    }
    for pkg in ("torchopt", "higher", "pytest-benchmark"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    machine_info["worstforget"] = info


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return bench_device(pytestconfig.getoption("--device"))


@dataclass
class GroupSetup:
    """What every benchmark of one workload shares: the timed callables and their ``extra_info``."""

    group: str
    fns: dict[str, Any]
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def _role(name: str, floors: dict[str, Any]) -> str:
    if name in floors:
        return "floor"
    return "ours" if name.startswith("ours") else "peer"


@pytest.fixture(scope="session")
def unrolled_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    contestants = {**UNROLLED, **UNROLLED_FLOORS}
    w32 = make_reweighting(device=device, dtype=torch.float32)
    w64 = make_reweighting(device=device, dtype=torch.float64)
    fns = {name: make(w32) for name, make in contestants.items()}
    setup = GroupSetup(UNROLLED_GROUP, fns)
    ref32, ref64 = fns[REFERENCE_UNROLLED](), UNROLLED[REFERENCE_UNROLLED](w64)()
    for name in contestants:
        info: dict[str, Any] = {"contestant": name, "role": _role(name, UNROLLED_FLOORS)}
        if name in UNROLLED:
            d32 = relative_error(fns[name](), ref32)
            d64 = relative_error(UNROLLED[name](w64)(), ref64)
            info.update(
                agree_reference=REFERENCE_UNROLLED,
                agree_rel_diff_float32=d32,
                agree_rel_diff_float64=d64,
                agree_asserted=True,
            )
            if not (d32 <= agreement_tolerance(torch.float32) and d64 <= agreement_tolerance(torch.float64)):
                setup.failures[name] = f"differs from {REFERENCE_UNROLLED}: {d32:.2e} (f32), {d64:.2e} (f64)"
        info.update(measure_memory(fns[name], device))
        setup.info[name] = info
    result = race(fns, pytestconfig.getoption("--race-rounds"), device)
    for name in contestants:
        setup.info[name].update(result.summary(name, OURS_UNROLLED))
    for name in UNROLLED_FLOORS:  # our inner loop against the bare one: our per-step bookkeeping
        setup.info[name]["race_ratio_to_forward_floor"] = result.paired_ratio(name, FORWARD_FLOOR)
    return setup


@pytest.fixture(scope="session")
def implicit_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    w32 = make_reweighting(device=device, dtype=torch.float32)
    w64 = make_reweighting(device=device, dtype=torch.float64)
    w64c = make_reweighting(device=device, dtype=torch.float64, damping=CONVERGED_DAMPING)
    fns = {name: make(w32) for name, make in IMPLICIT.items()}
    setup = GroupSetup(IMPLICIT_GROUP, fns)
    ref32 = fns[REFERENCE_IMPLICIT]()
    ref64 = IMPLICIT[REFERENCE_IMPLICIT](w64)()
    ref64c = IMPLICIT[REFERENCE_IMPLICIT](w64c)()
    same_algorithm = {OURS_IMPLICIT, "ours Implicit CG20 forward-HVP", REFERENCE_IMPLICIT}
    for name, make in IMPLICIT.items():
        info: dict[str, Any] = {"contestant": name, "role": _role(name, {})}
        d32 = relative_error(fns[name](), ref32)
        d64 = relative_error(make(w64)(), ref64)
        info.update(
            agree_reference=REFERENCE_IMPLICIT, agree_rel_diff_float32=d32, agree_rel_diff_float64=d64
        )
        info["agree_asserted"] = name in same_algorithm
        if name in same_algorithm:
            dc = relative_error(make(w64c)(), ref64c)
            info["agree_rel_diff_float64_converged"] = dc
            ok = (
                d32 <= CG_TOLERANCE[torch.float32]
                and d64 <= CG_TOLERANCE[torch.float64]
                and dc <= agreement_tolerance(torch.float64)
            )
            if not ok:
                setup.failures[name] = (
                    f"differs from {REFERENCE_IMPLICIT}: {d32:.2e} (f32), {d64:.2e} (f64), "
                    f"{dc:.2e} (f64, converged)"
                )
        info.update(measure_memory(fns[name], device))
        setup.info[name] = info
    result = race(fns, pytestconfig.getoption("--race-rounds"), device)
    for name in IMPLICIT:
        setup.info[name].update(result.summary(name, OURS_IMPLICIT))
    return setup


@pytest.fixture(scope="session")
def learned_lr_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    w32 = make_learned_lr(device=device, dtype=torch.float32)
    w64 = make_learned_lr(device=device, dtype=torch.float64)
    fns = {name: make(w32) for name, make in LEARNED_LR.items()}
    setup = GroupSetup(LEARNED_LR_GROUP, fns)
    ref32, ref64 = fns[REFERENCE_LEARNED_LR](), LEARNED_LR[REFERENCE_LEARNED_LR](w64)()
    for name, make in LEARNED_LR.items():
        d32 = relative_error(fns[name](), ref32)
        d64 = relative_error(make(w64)(), ref64)
        info: dict[str, Any] = {
            "contestant": name,
            "role": _role(name, {}),
            "agree_reference": REFERENCE_LEARNED_LR,
            "agree_rel_diff_float32": d32,
            "agree_rel_diff_float64": d64,
            "agree_asserted": True,
            "agree_tolerance_float32": LR_TOLERANCE[torch.float32],
            "agree_tolerance_float64": LR_TOLERANCE[torch.float64],
        }
        if not (d32 <= LR_TOLERANCE[torch.float32] and d64 <= LR_TOLERANCE[torch.float64]):
            setup.failures[name] = f"differs from {REFERENCE_LEARNED_LR}: {d32:.2e} (f32), {d64:.2e} (f64)"
        info.update(measure_memory(fns[name], device))
        if device.type == "cpu":  # the allocator's own peak: also sees inside torch.func (Forward)
            info.update(cpu_allocator_peak(fns[name]))
        setup.info[name] = info
    result = race(fns, pytestconfig.getoption("--race-rounds"), device)
    for name in LEARNED_LR:
        setup.info[name].update(result.summary(name, OURS_UNROLLED))
    return setup
