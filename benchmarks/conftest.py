"""Options, machine description and the per-workload set-up (agreement checks, memory, interleaved race).

Options (after ``pytest benchmarks``; with ``make bench`` pass them as ``ARGS="..."``):

- ``--device``: ``cpu`` (default), ``cuda``, ``cuda:1``…; default ``$WORSTFORGET_BENCH_DEVICE``.
- ``--threads``: ``torch.set_num_threads``; default ``$WORSTFORGET_BENCH_THREADS``, else torch's default.
- ``--race-rounds``: interleaved rounds per contestant (default 25).
- ``--bench-rounds``: pytest-benchmark rounds per contestant (default 15, after one warm-up round).
- ``--race-budget``: seconds of interleaved timing per workload at most (default 60; never under 3 rounds).
- ``--bench-budget``: seconds of pytest-benchmark timing per contestant at most (default 6; >= 3 rounds).

Under ``--benchmark-disable`` (``make test``, via ``addopts``) the suite runs as a smoke test: every
contestant still runs and every agreement is still asserted, but there are no races, the largest sizes and
sweeps are skipped or shrunk (`quick`), and nothing is timed.
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
from .reference import (
    OURS_IMPLICIT_REF,
    OURS_UNROLLED_REF,
    SAME_AS,
    SAME_TOLERANCE,
    describe,
    ref_contestants,
    scaled_ridge,
)
from .reference import weighted_ridge as ref_weighted_ridge
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
LARGE_HIDDEN, LARGE_STEPS = 512, 100
UNROLLED_LARGE_GROUP = (
    f"unrolled large: data re-weighting, digits, MLP 64-{LARGE_HIDDEN}-10, 1,200 weights, "
    f"T={LARGE_STEPS} SGD steps"
)
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
    group.addoption(
        "--race-budget", type=float, default=60.0, help="interleaved seconds per workload at most"
    )
    group.addoption(
        "--bench-budget", type=float, default=6.0, help="benchmark seconds per contestant at most"
    )


def quick(config: pytest.Config) -> bool:
    """``--benchmark-disable`` without ``--benchmark-enable``: the smoke-test mode of ``make test``."""
    try:
        return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")
    except ValueError:  # pytest-benchmark not loaded
        return True


def run_race(fns: dict[str, Any], config: pytest.Config, device: torch.device) -> Any:
    """The interleaved race of one workload (None in quick mode: nothing is timed there)."""
    if quick(config):
        return None
    return race(fns, config.getoption("--race-rounds"), device, budget_s=config.getoption("--race-budget"))


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


@pytest.fixture(scope="session", autouse=True)
def _quick_threads(pytestconfig: pytest.Config) -> Any:
    """Quick mode: one torch thread (on a loaded 2-core machine two threads spin against each other and the
    smoke run takes several times longer); restored afterwards. ``--threads`` still wins."""
    if not quick(pytestconfig) or pytestconfig.getoption("--threads") or os.environ.get(THREADS_ENV):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def _unrolled_setup(group: str, device: torch.device, config: pytest.Config, **size: Any) -> GroupSetup:
    contestants = {**UNROLLED, **UNROLLED_FLOORS}
    w32 = make_reweighting(device=device, dtype=torch.float32, **size)
    w64 = make_reweighting(device=device, dtype=torch.float64, **size)
    fns = {name: make(w32) for name, make in contestants.items()}
    setup = GroupSetup(group, fns)
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
        if not quick(config):
            info.update(measure_memory(fns[name], device))
        setup.info[name] = info
    result = run_race(fns, config, device)
    if result is not None:
        for name in contestants:
            setup.info[name].update(result.summary(name, OURS_UNROLLED))
        for name in UNROLLED_FLOORS:  # our inner loop against the bare one: our per-step bookkeeping
            setup.info[name]["race_ratio_to_forward_floor"] = result.paired_ratio(name, FORWARD_FLOOR)
    return setup


@pytest.fixture(scope="session")
def unrolled_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    return _unrolled_setup(UNROLLED_GROUP, device, pytestconfig)


@pytest.fixture(scope="session")
def unrolled_large_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    """Workload 1 at MLP 64-512-10 and T = 100 (quick mode: T = 3)."""
    steps = 3 if quick(pytestconfig) else LARGE_STEPS
    return _unrolled_setup(UNROLLED_LARGE_GROUP, device, pytestconfig, hidden=LARGE_HIDDEN, steps=steps)


@pytest.fixture(scope="session")
def implicit_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    size: dict[str, Any] = {"n_train": 400} if quick(pytestconfig) else {}  # quick: 400 rows
    w32 = make_reweighting(device=device, dtype=torch.float32, **size)
    w64 = make_reweighting(device=device, dtype=torch.float64, **size)
    w64c = make_reweighting(device=device, dtype=torch.float64, damping=CONVERGED_DAMPING, **size)
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
        if not quick(pytestconfig):
            info.update(measure_memory(fns[name], device))
        setup.info[name] = info
    result = run_race(fns, pytestconfig, device)
    for name in IMPLICIT if result is not None else ():
        setup.info[name].update(result.summary(name, OURS_IMPLICIT))
    return setup


@pytest.fixture(scope="session")
def learned_lr_setup(device: torch.device, pytestconfig: pytest.Config) -> GroupSetup:
    if quick(pytestconfig):  # quick: T = 10
        w32, w64 = (
            make_reweighting(device=device, dtype=dt, steps=10) for dt in (torch.float32, torch.float64)
        )
    else:
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
        if not quick(pytestconfig):
            info.update(measure_memory(fns[name], device))
            if device.type == "cpu":  # the allocator's own peak: also sees inside torch.func (Forward)
                info.update(cpu_allocator_peak(fns[name]))
        setup.info[name] = info
    result = run_race(fns, pytestconfig, device)
    for name in LEARNED_LR if result is not None else ():
        setup.info[name].update(result.summary(name, OURS_UNROLLED))
    return setup


# ------------------------------------------------------------- closed-form workloads (benchmarks.reference)

RIDGE_SIZES = (100, 1000, 10000)
QUICK_RIDGE_SIZES = (100,)
QUICK_T = 10  # quick mode: T = S = 10 (the titles still say 100; nothing is recorded in quick mode)


def reference_workloads() -> dict[str, tuple[str, Any]]:
    """key -> (group title, factory); the factory builds the `Ref` (data and closed form) when first used."""
    out: dict[str, tuple[str, Any]] = {}
    for p in RIDGE_SIZES:
        out[f"ridge-{p}"] = (
            f"ridge p={p}: λ hypergradient, inner dim {p}, n=200, T=S=100, K=20 (closed form)",
            lambda quick, p=p: scaled_ridge(p, T=QUICK_T if quick else 100),
        )
    out["weighted-ridge"] = (
        "weighted ridge: data re-weighting, 1,000 weights, p=100, T=S=100, K=20 (closed form)",
        lambda quick: ref_weighted_ridge(n=1000, p=100, T=QUICK_T if quick else 100),
    )
    return out


def reference_names(key: str) -> list[str]:
    """The contestants of workload ``key`` (known without building its data)."""
    if key.startswith("ridge-"):
        return list(ref_contestants(int(key.split("-")[1]), 1))
    return list(ref_contestants(100, 1000))


def _reference_setup(key: str, device: torch.device, config: pytest.Config) -> GroupSetup:
    title, factory = reference_workloads()[key]
    r = factory(quick(config))
    contestants = ref_contestants(r.inner_dim, r.outer_dim)
    fns = {name: make(r) for name, make in contestants.items()}
    setup = GroupSetup(title, fns)
    grads = {name: fn() for name, fn in fns.items()}
    for name in contestants:
        info: dict[str, Any] = {
            "contestant": name,
            "role": "ours" if name.startswith("ours") else "peer",
            "workload": describe(r),
            "rel_error_closed_form": r.error(grads[name]),
        }
        ref_name = SAME_AS.get(name)
        if ref_name is None and name in SAME_AS.values():
            ref_name = name
        if ref_name is not None:
            d = relative_error(grads[name], grads[ref_name])
            info.update(agree_reference=ref_name, agree_rel_diff_float64=d, agree_asserted=True)
            if d > SAME_TOLERANCE[ref_name]:
                setup.failures[name] = f"differs from {ref_name}: {d:.2e} (f64)"
        if not quick(config):
            info.update(measure_memory(fns[name], device))
        setup.info[name] = info
    result = run_race(fns, config, device)
    if result is not None:
        for name in contestants:
            setup.info[name].update(result.summary(name, OURS_IMPLICIT_REF))
            setup.info[name]["race_ratio_to_unrolled"] = result.paired_ratio(name, OURS_UNROLLED_REF)
    return setup


@pytest.fixture(scope="session")
def reference_setups(device: torch.device, pytestconfig: pytest.Config) -> Any:
    cache: dict[str, GroupSetup] = {}

    def get(key: str) -> GroupSetup:
        if key not in cache:
            cache[key] = _reference_setup(key, device, pytestconfig)
        return cache[key]

    return get
