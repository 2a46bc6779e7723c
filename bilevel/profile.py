"""``profile``: time, peak memory, Hessian-vector products and hypergradient error of several solvers.

For each solver, on one problem and one outer point:

- **time**: wall-clock seconds of ``solver.hypergrad(...)`` (inner solve included), median over
  ``repeats`` calls after ``warmup`` untimed ones, with the min and max as the spread. Calls are interleaved
  (one call of every solver per round, the order rotating), so a change of machine load hits every solver
  alike; CUDA kernels are synchronised before the clock stops. Every call starts with ``solver.reset()``
  (`Solver.reset`: `Implicit` forgets its warm start), so every repeat does the same work.
- **peak memory**, above what was allocated when the call started. On CUDA,
  ``torch.cuda.max_memory_allocated`` over the timed calls (``memory_kind="cuda_max_memory_allocated"``).
  On the CPU, the peak of torch's CPU allocator during one extra, untimed call, summed from the torch
  profiler's memory events (``memory_kind="cpu_allocator_peak"``): every tensor counts (graph,
  temporaries, ``torch.func`` duals), Python objects do not. If the profiler's event list is unavailable,
  the row's ``peak_bytes`` is None and ``memory_kind`` says why.
- **HVP count**: ``Hypergrad.info["hvp_count"]`` as the solver reports it (exact for `Implicit`, `Forward`
  and `FirstOrder`; `Unrolled` reports its backward pass as ≈ one product per differentiated step).
- **relative error** ‖g − g_ref‖ / ‖g_ref‖ (and the cosine) of the hypergradient g against a reference
  g_ref, over all outer entries, in float64. ``reference`` is

  - ``None`` (default): the exact implicit hypergradient at a tightly solved inner problem. The inner point
    is the most stationary one the profiled solvers returned (smallest ‖∇_θ g‖). With at most
    ``DENSE_MAX`` inner entries it is refined by Newton's method with the dense Hessian and the linear
    system is solved densely (`Direct`): exact up to rounding, any non-singular Hessian. Above that, the
    point is used as it is and H v = ∂_θ f is solved by `CG` to a relative residual of 1e-10 (1e-5 below
    float64), which needs a positive-definite Hessian there; ``reference_info`` gives the point's ‖∇_θ g‖.
    Like `check_hypergrad` it uses the first batch of each data argument;
  - a solver (a `bilevel.Solver`): called once, with the same arguments;
  - the name of one of ``solvers``: that row's hypergradient (no extra call);
  - a dict of tensors shaped like ``outer``: a known ∇F (a closed form).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import tree
from .check import newton_inner
from .hypergrad import Hypergrad, Solver, validate_call
from .implicit import implicit_from_solution
from .linear_solvers import CG, Direct, IndefiniteHessianError
from .problem import BilevelProblem, Data, DataStream
from .tree import Params
from .validate import positive_int

DENSE_MAX = 2048  # inner entries up to which the default reference uses Newton + a dense solve
_INFO_KEYS = (
    "inner_grad_norm",
    "outer_loss",
    "iterations",
    "residual",
    "inner_steps",
    "differentiated_steps",
    "checkpoints",
    "linear_solver",
    "warm_started",
    "mode",
    "indefinite",
)


@dataclass
class ProfileRow:
    """One solver's measurements (times in seconds, memory in bytes; None where not measured)."""

    name: str
    solver: str  # repr of the solver
    time_s: float | None  # median
    time_min_s: float | None
    time_max_s: float | None
    times_s: list[float]
    peak_bytes: int | None
    hvp_count: int | None
    rel_error: float | None
    cosine: float | None
    info: dict[str, Any] = field(default_factory=dict)  # scalar diagnostics from Hypergrad.info
    failed: str | None = None  # "ExceptionType: message" when the solver raised


@dataclass
class Profile:
    """What `profile` measured: one `ProfileRow` per solver, plus how."""

    rows: list[ProfileRow]
    reference: str
    reference_info: dict[str, Any]
    memory_kind: str
    device: str
    repeats: int
    warmup: int
    machine: dict[str, Any]

    def __getitem__(self, name: str) -> ProfileRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``json.dumps(p.to_dict(), allow_nan=False)`` works): non-finite numbers become None."""
        return _json_safe(asdict(self))

    def table(self, fmt: str = "text") -> str:
        """The rows as a fixed-width text table (``fmt="text"``) or a markdown table (``"markdown"``)."""
        if fmt not in ("text", "markdown"):
            raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
        head = ["solver", "time ms (median)", "min-max ms", "peak memory", "HVPs", "rel. error"]
        body = [row_cells(r) for r in self.rows]
        foot = [
            f"reference: {self.reference}; memory: {self.memory_kind}; device {self.device}; "
            f"{self.repeats} repeats after {self.warmup} warm-up"
        ] + [f"failed: {line}" for line in self.failures()]
        if fmt == "markdown":
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "--:|" * (len(head) - 1)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
            return "\n".join(lines) + "\n\n" + "\n\n".join(foot) + "\n"
        widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(head)]
        fmt_row = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt_row.format(*head), fmt_row.format(*("-" * w for w in widths))]
        lines += [fmt_row.format(*cells) for cells in body]
        return "\n".join(lines + foot) + "\n"

    def __str__(self) -> str:
        return self.table()

    def failures(self) -> list[str]:
        """One line ``name: ExceptionType: message`` per solver that raised."""
        return [f"{r.name}: {r.failed}" for r in self.rows if r.failed is not None]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    ms = 1e3 * seconds
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def row_cells(r: ProfileRow) -> list[str]:
    """A row as the strings of `Profile.table` (solver, median ms, min-max ms, memory, HVPs, error); a
    failed row shows the exception's type (`Profile.failures` has the messages)."""
    if r.failed is not None:
        return [r.name, "failed", r.failed.split(":", 1)[0], "", "", ""]
    return [
        r.name,
        _ms(r.time_s),
        f"{_ms(r.time_min_s)}-{_ms(r.time_max_s)}",
        human_bytes(r.peak_bytes),
        "n/a" if r.hvp_count is None else str(r.hvp_count),
        "n/a" if r.rel_error is None else f"{r.rel_error:.2e}",
    ]


def machine_info(device: torch.device) -> dict[str, Any]:
    """The CPU model (``/proc/cpuinfo``), logical cores, torch version and threads, and the GPU's name."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_allocator_peak(fn: Callable[[], Any]) -> tuple[int | None, str]:
    """Peak bytes torch's CPU allocator holds during ``fn()`` above what it held at the start, from the
    torch profiler's memory events (``profile_memory=True``: every allocation and free, summed in time
    order). Returns ``(bytes, "cpu_allocator_peak")``, or ``(None, reason)`` when the profiler's event list
    (a private API) is unavailable."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    try:
        # fd 2 is silenced: torch 2.13's profiler logs "profiler_start"/"profiler_stop" there, and warns
        # about blocks allocated before it started (their frees are not counted). The solver has already
        # run (the first call), so nothing it prints is lost.
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
            del out
        kinds = torch.autograd.DeviceType
        cpu = {kinds.CPU, kinds.MKLDNN, kinds.IDEEP}
        events = [
            e
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() in cpu
        ]
    except (AttributeError, RuntimeError) as exc:
        return None, f"unavailable: torch profiler memory events ({type(exc).__name__})"
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak, "cpu_allocator_peak"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (C++ logging that Python cannot silence)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def relative_error(got: Params, want: Params) -> tuple[float, float]:
    """(‖got − want‖ / ‖want‖, cosine) over all entries, in float64 on the CPU."""
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(f"the hypergradient has no entries {missing} that the reference has")
    a = torch.cat([got[k].detach().double().cpu().reshape(-1) for k in want])
    b = torch.cat([want[k].detach().double().cpu().reshape(-1) for k in want])
    rel = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    cos = float(a @ b) / den if den > 0 else float(torch.equal(a, b))
    return rel, cos


def to_device(data: Any, device: torch.device) -> Any:
    """Tensors inside (nested) lists, tuples and dicts moved to ``device``; anything else unchanged."""
    if isinstance(data, Tensor):
        return data.to(device)
    if isinstance(data, (list, tuple)):
        return type(data)(to_device(d, device) for d in data)
    if isinstance(data, Mapping):
        return {k: to_device(v, device) for k, v in data.items()}
    return data


# ------------------------------------------------------------------------------------------- reference


def default_reference(
    problem: BilevelProblem,
    inner: Params,
    outer: Params,
    inner_data: Data,
    outer_data: Data,
) -> tuple[Params, dict[str, Any]]:
    """The exact implicit hypergradient near ``inner`` (see the module docstring); returns (∇F, info)."""
    inner_batch = DataStream(inner_data, "inner_data")(0)
    outer_batch = DataStream(outer_data, "outer_data")(0)
    lam = tree.detach(outer)
    n = tree.numel(inner)
    dtype = next(iter(inner.values())).dtype
    f64 = dtype == torch.float64
    if n <= DENSE_MAX:
        theta, gnorm = newton_inner(problem, inner, lam, inner_batch, tol=1e-12 if f64 else 1e-5, max_iter=20)
        hg = implicit_from_solution(
            problem, theta, lam, inner_batch=inner_batch, outer_batch=outer_batch, linear_solver=Direct(n)
        )
        how = "Newton-refined inner solution + dense solve (Direct)"
    else:
        solver = CG(max_iter=1000, tol=1e-10 if f64 else 1e-5)
        try:
            hg = implicit_from_solution(
                problem,
                tree.detach(inner),
                lam,
                inner_batch=inner_batch,
                outer_batch=outer_batch,
                linear_solver=solver,
            )
        except IndefiniteHessianError as exc:
            raise ValueError(
                f"profile: the default reference needs a positive-definite inner Hessian for CG on "
                f"{n} > {DENSE_MAX} inner entries, and {exc.args[0].split(':')[0]}. Name a reference: "
                "reference=Implicit(..., CG(damping=...)), a solver name from `solvers` (e.g. a full "
                "Unrolled), or a known hypergradient dict"
            ) from None
        gnorm = hg.info["inner_grad_norm"]
        how = f"CG to relative residual {solver.tol:g} at the most stationary inner point found"
    info = {
        "method": how,
        "inner_grad_norm": float(gnorm),
        "hvp_count": hg.info["hvp_count"],
        "residual": hg.info["residual"],
        "seconds": hg.info["seconds"],
    }
    return hg.grad, info


# ------------------------------------------------------------------------------------------- profile


def _named(solvers: Mapping[str, Solver] | Sequence[Solver]) -> dict[str, Solver]:
    if isinstance(solvers, Mapping):
        named = dict(solvers)
    elif isinstance(solvers, Sequence) and not isinstance(solvers, (str, bytes)):
        named = {}
        for s in solvers:
            base = name = repr(s)
            i = 2
            while name in named:
                name, i = f"{base} #{i}", i + 1
            named[name] = s
    else:
        raise TypeError(
            f"solvers must be a dict name -> solver or a list of solvers, got {type(solvers).__name__}; "
            "e.g. {'cg': Implicit(optim.SGD(lr=0.1), 100, CG()), 'unrolled': Unrolled(optim.SGD(lr=0.1), 50)}"
        )
    if not named:
        raise ValueError(
            "solvers is empty: pass at least one, e.g. {'unrolled': Unrolled(optim.SGD(lr=0.1), steps=50)}"
        )
    for name, s in named.items():
        if not isinstance(name, str):
            raise TypeError(f"solvers: names must be strings, got {name!r}")
        if not isinstance(s, Solver):
            raise TypeError(
                f"solvers[{name!r}] is a {type(s).__name__}, not a solver: pass a bilevel solver such as "
                "Unrolled(...), Implicit(...), Forward(...) or FirstOrder(...) (a bilevel.Solver)"
            )
    return named


def _check_reference(reference: Any, named: dict[str, Solver], outer: Params) -> None:
    if reference is None or isinstance(reference, Solver):
        return
    if isinstance(reference, str):
        if reference not in named:
            raise ValueError(f"reference {reference!r} is not one of the solvers' names {sorted(named)}")
        return
    if isinstance(reference, Mapping) and all(isinstance(v, Tensor) for v in reference.values()):
        bad = {k for k in outer if k not in reference or reference[k].shape != outer[k].shape}
        if bad:
            raise ValueError(
                f"reference: a hypergradient dict must have the keys and shapes of outer; wrong or missing "
                f"{sorted(bad)}"
            )
        return
    raise TypeError(
        f"reference must be None (an exact implicit solve), a solver (a bilevel.Solver), the name of one "
        f"of the solvers, or a dict of tensors shaped like outer (a known hypergradient); got "
        f"{type(reference).__name__}"
    )


def _resolve_device(device: str | torch.device | None, outer: Params) -> torch.device:
    if device is None:
        return next(iter(outer.values())).device if outer else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} not understood: use 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available: use device='cpu'")
    return dev


def _scalars(info: Mapping[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in _INFO_KEYS if k in info and isinstance(info[k], (int, float, str, bool))}


@dataclass(frozen=True)
class _Call:
    """The one call every solver makes: ``solver.hypergrad(problem, inner_init, outer, inner_data,
    outer_data)`` on ``device``, after ``solver.reset()`` (so every repeat does the same work)."""

    problem: BilevelProblem
    inner_init: Params
    outer: Params
    inner_data: Data
    outer_data: Data
    device: torch.device

    def __call__(self, solver: Solver) -> Hypergrad:
        solver.reset()
        return solver.hypergrad(
            self.problem, self.inner_init, self.outer, inner_data=self.inner_data, outer_data=self.outer_data
        )


def profile(
    problem: BilevelProblem,
    solvers: Mapping[str, Solver] | Sequence[Solver],
    inner_init: Params,
    outer: Params,
    *,
    inner_data: Data = None,
    outer_data: Data = None,
    reference: Solver | str | Mapping[str, Tensor] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    on_error: str = "record",
) -> Profile:
    """Time, peak memory, HVP count and relative hypergradient error of each of ``solvers`` on one call
    ``solver.hypergrad(problem, inner_init, outer, inner_data, outer_data)``; see the module docstring for
    what is measured and how.

    ``solvers``: a dict name -> solver, or a list (named by their repr). ``reference``: None (an exact
    implicit solve), a solver, the name of one of ``solvers``, or a dict of tensors (a known ∇F).
    ``device``: move ``inner_init``, ``outer`` and the tensors in list/tuple/dict data there (the losses'
    own tensors are yours to place); None: where ``outer`` is. ``on_error``: ``"record"`` (a solver that
    raises gets a row with ``failed`` set; if every solver fails the first error is raised) or ``"raise"``.
    ``warmup``: untimed calls per solver before the timed ones; the first call, whose hypergradient is
    reported, is always made, so ``warmup=0`` and ``warmup=1`` both leave one untimed call.
    Deterministic data (None, a list of batches, a callable step -> batch) makes every repeat the same call.

    The steps: check the arguments and place the data (`_set_up`); the first call of every solver, which
    gives its hypergradient (`_first_calls`); the rest of the warm-up; the CPU memory peaks (`_cpu_peaks`);
    the interleaved timed rounds (`_timed_rounds`); the reference (`_reference`); the rows (`_rows`).
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"on_error must be 'record' or 'raise', got {on_error!r}")
    named, call = _set_up(
        problem, solvers, inner_init, outer, inner_data, outer_data, reference, repeats, warmup, device
    )
    results, failed = _first_calls(named, call, raise_errors=on_error == "raise")
    live = {name: named[name] for name in named if name in results}
    for _ in range(warmup - 1):
        for solver in live.values():
            call(solver)
    peaks, memory_kind = _cpu_peaks(live, call)
    times = _timed_rounds(live, call, repeats, peaks)
    ref_grad, ref_info, ref_label = _reference(reference, results, call)
    return Profile(
        rows=_rows(named, results, failed, times, peaks, ref_grad),
        reference=ref_label,
        reference_info=ref_info,
        memory_kind=memory_kind,
        device=str(call.device),
        repeats=repeats,
        warmup=warmup,
        machine=machine_info(call.device),
    )


def _set_up(
    problem: BilevelProblem,
    solvers: Mapping[str, Solver] | Sequence[Solver],
    inner_init: Params,
    outer: Params,
    inner_data: Data,
    outer_data: Data,
    reference: Any,
    repeats: int,
    warmup: int,
    device: str | torch.device | None,
) -> tuple[dict[str, Solver], _Call]:
    """The checked arguments: the named solvers, and the call with its data placed on the device."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(
            f"problem must be a BilevelProblem(inner_loss, outer_loss), got {type(problem).__name__}"
        )
    named = _named(solvers)
    positive_int(repeats, "repeats")
    positive_int(warmup, "warmup", allow_zero=True)
    dev = _resolve_device(device, outer)
    if device is not None:
        inner_init, outer = to_device(inner_init, dev), to_device(outer, dev)
        inner_data, outer_data = to_device(inner_data, dev), to_device(outer_data, dev)
    validate_call(problem, inner_init, outer)
    _check_reference(reference, named, outer)
    return named, _Call(problem, inner_init, outer, inner_data, outer_data, dev)


def _first_calls(
    named: dict[str, Solver], call: _Call, *, raise_errors: bool
) -> tuple[dict[str, Hypergrad], dict[str, BaseException]]:
    """One call per solver, in order: its hypergradient, or the exception it raised (re-raised with
    ``raise_errors``, or when every solver fails: the first error)."""
    results: dict[str, Hypergrad] = {}
    failed: dict[str, BaseException] = {}
    for name, solver in named.items():
        try:
            results[name] = call(solver)
        except Exception as exc:  # noqa: BLE001 -- recorded in the row (on_error="record")
            if raise_errors:
                raise
            failed[name] = exc
    if not results:
        raise next(iter(failed.values()))
    return results, failed


def _cpu_peaks(live: dict[str, Solver], call: _Call) -> tuple[dict[str, int | None], str]:
    """On the CPU, the allocator peak of one extra untimed call per solver (`cpu_allocator_peak`); on CUDA
    nothing yet (`_timed_rounds` reads the CUDA peaks). Returns (peaks, memory_kind)."""
    if call.device.type == "cuda":
        return {}, "cuda_max_memory_allocated"
    peaks: dict[str, int | None] = {}
    memory_kind = "cpu_allocator_peak"
    for name, solver in live.items():
        peaks[name], memory_kind = cpu_allocator_peak(lambda s=solver: call(s))
    return peaks, memory_kind


def _timed_rounds(
    live: dict[str, Solver], call: _Call, repeats: int, peaks: dict[str, int | None]
) -> dict[str, list[float]]:
    """``repeats`` rounds, each calling every solver once in a rotating order; wall seconds per call (CUDA
    synchronised before the clock starts and stops). On CUDA, each solver's largest
    ``max_memory_allocated`` above the start of its call goes into ``peaks``."""
    dev = call.device
    names = list(live)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            start = time.perf_counter()
            call(live[name])
            synchronize(dev)
            times[name].append(time.perf_counter() - start)
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev) - base
                peaks[name] = max(peaks.get(name) or 0, peak)
    return times


def _rows(
    named: dict[str, Solver],
    results: dict[str, Hypergrad],
    failed: dict[str, BaseException],
    times: dict[str, list[float]],
    peaks: dict[str, int | None],
    ref_grad: Params,
) -> list[ProfileRow]:
    """One `ProfileRow` per solver, in the order given; a failed solver's row carries its exception."""
    rows = []
    for name, solver in named.items():
        if name in failed:
            exc = failed[name]
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())
            rows.append(ProfileRow(name, repr(solver), None, None, None, [], None, None, None, None, {}, msg))
            continue
        hg, ts = results[name], times[name]
        err, cos = relative_error(hg.grad, ref_grad)
        hvp = hg.info.get("hvp_count")
        rows.append(
            ProfileRow(
                name=name,
                solver=repr(solver),
                time_s=statistics.median(ts),
                time_min_s=min(ts),
                time_max_s=max(ts),
                times_s=ts,
                peak_bytes=peaks.get(name),
                hvp_count=int(hvp) if hvp is not None else None,
                rel_error=err,
                cosine=cos,
                info=_scalars(hg.info),
            )
        )
    return rows


def _reference(
    reference: Solver | str | Mapping[str, Tensor] | None,
    results: dict[str, Hypergrad],
    call: _Call,
) -> tuple[Params, dict[str, Any], str]:
    """(g_ref, its diagnostics, its label) for ``reference`` (see the module docstring)."""
    if reference is None:
        best = min(results.values(), key=lambda hg: _stationarity(hg))
        grad, info = default_reference(call.problem, best.inner, call.outer, call.inner_data, call.outer_data)
        return grad, info, f"exact implicit ({info['method']})"
    if isinstance(reference, str):
        if reference not in results:
            raise ValueError(f"reference {reference!r} failed, so there is nothing to compare with")
        return results[reference].grad, _scalars(results[reference].info), f"solver {reference!r}"
    if isinstance(reference, Mapping):
        return dict(reference), {}, "given hypergradient"
    hg = call(reference)
    return hg.grad, _scalars(hg.info), repr(reference)


def _stationarity(hg: Hypergrad) -> float:
    value = hg.info.get("inner_grad_norm")
    return float(value) if value is not None and math.isfinite(float(value)) else math.inf


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return _json_safe(obj.item())
    return str(obj)
