"""Turn a pytest-benchmark JSON file into ``docs/benchmarks.md``.

    python -m benchmarks.report benchmarks/results.json docs/benchmarks.md

Every number in the written document comes from the JSON (timings, the interleaved race, agreement and
saved-tensor bytes recorded in ``extra_info`` by ``benchmarks/conftest.py``) or, for the accuracy-vs-cost
section, from ``docs/accuracy_cost.md`` written by ``python -m benchmarks.accuracy_cost``. The only text
kept from an existing document is the hand-written block between ``<!-- notes:begin -->`` and
``<!-- notes:end -->``. The file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from . import report_extra

NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"
DEFAULT_NOTES = "(Hand-written reading of the tables goes here; `benchmarks.report` keeps this block.)"
MB = 1024 * 1024
UNROLLED_REF = "ours Unrolled T"  # benchmarks.reference.OURS_UNROLLED_REF (no torch import here)


def load(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return data


GROUP_ORDER = ("unrolled:", "unrolled large", "implicit", "learned", "ridge", "weighted")


def groups(data: dict[str, Any]) -> OrderedDict[str, list[dict[str, Any]]]:
    out: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for bench in data["benchmarks"]:
        if bench.get("extra_info", {}).get("kind"):  # sweeps, targets, search, RTE: see report_extra
            continue
        out.setdefault(bench.get("group") or "(no group)", []).append(bench)

    def rank(group: str) -> int:
        return next((i for i, p in enumerate(GROUP_ORDER) if group.startswith(p)), len(GROUP_ORDER))

    return OrderedDict(sorted(out.items(), key=lambda kv: rank(kv[0])))


def name_of(bench: dict[str, Any]) -> str:
    return bench.get("extra_info", {}).get("contestant") or bench["name"]


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f}"


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def sci(x: float | None) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.1e}"


def reference_of(benches: list[dict[str, Any]]) -> str | None:
    for b in benches:
        ref = b.get("extra_info", {}).get("race_reference")
        if ref:
            return ref
    return None


def machine_section(data: dict[str, Any]) -> list[str]:
    mi = data.get("machine_info", {})
    wf = mi.get("worstforget", {})
    ci = data.get("commit_info", {})
    rows = [
        ("CPU model (lscpu)", wf.get("cpu_model") or mi.get("cpu", {}).get("brand_raw", "?")),
        ("logical cores", wf.get("logical_cores", mi.get("cpu", {}).get("count", "?"))),
        ("torch", wf.get("torch", "?")),
        ("torch threads", wf.get("torch_threads", "?")),
        ("device", wf.get("device", "?")),
        ("Python", wf.get("python", mi.get("python_version", "?"))),
        ("torchopt / higher", f"{wf.get('torchopt', '?')} / {wf.get('higher', '?')}"),
        ("pytest-benchmark", wf.get("pytest-benchmark", data.get("version", "?"))),
        (
            "load average at start (1/5/15 min)",
            " / ".join(f"{x:.1f}" for x in wf.get("load_average_at_start", [])),
        ),
        ("run at", data.get("datetime", "?")),
        ("commit", f"{ci.get('id', '?')[:12]}{' (dirty tree)' if ci.get('dirty') else ''}"),
    ]
    if "cuda_device" in wf:
        rows.insert(5, ("GPU", wf["cuda_device"]))
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def timing_table(benches: list[dict[str, Any]]) -> list[str]:
    ref = reference_of(benches)
    by_name = {name_of(b): b for b in benches}
    ref_median = by_name[ref]["stats"]["median"] if ref in by_name else None
    closed = any("rel_error_closed_form" in b.get("extra_info", {}) for b in benches)
    first = benches[0].get("extra_info", {}) if benches else {}
    fullname = benches[0].get("fullname", "") if benches else ""
    out = []
    if first.get("workload"):
        out += [f"Workload: {first['workload']}.", ""]
    if fullname:
        out += [
            f"Reproduce: `pytest {fullname.split('::')[0]} --benchmark-enable --benchmark-only "
            "--benchmark-json=r.json` (then `python -m benchmarks.report r.json docs/benchmarks.md`).",
            "",
        ]
    out += [
        f"Ratios are **time ÷ time of `{ref}`** (above 1: slower than ours). *Interleaved* = all "
        "contestants run round-robin in one loop, ratio = median over rounds of the per-round ratio (same "
        "load for both); *sequential* = pytest-benchmark's rounds, one contestant after another.",
        "",
        "| contestant | role | median ms | IQR ms | rounds | interleaved median ms (rounds) "
        "| × ours, interleaved | × ours, sequential | rel. diff to reference f32 / f64 |"
        + (" × ours Unrolled, interleaved | rel. error vs closed form |" if closed else ""),
        "|---|---|--:|--:|--:|--:|--:|--:|---|" + ("--:|--:|" if closed else ""),
    ]
    for b in benches:
        e, s = b.get("extra_info", {}), b["stats"]
        seq = s["median"] / ref_median if ref_median else None
        agree = "—"
        if "agree_rel_diff_float64" in e:
            agree = f"{sci(e.get('agree_rel_diff_float32'))} / {sci(e['agree_rel_diff_float64'])}"
            if e.get("agree_rel_diff_float64_converged") is not None:
                agree += f" (converged f64: {sci(e['agree_rel_diff_float64_converged'])})"
            agree += " ✔" if e.get("agree_asserted") else " (different method)"
        out.append(
            f"| {name_of(b)} | {e.get('role', '?')} | {ms(s['median'])} | {ms(s['iqr'])} | {s['rounds']} "
            f"| {ms(e.get('race_median_s'))} ({e.get('race_rounds', '—')}) "
            f"| {ratio(e.get('race_ratio_to_reference'))} | {ratio(seq)} | {agree} |"
            + (
                f" {ratio(e.get('race_ratio_to_unrolled'))} | {sci(e.get('rel_error_closed_form'))} |"
                if closed
                else ""
            )
        )
    refs = {b.get("extra_info", {}).get("agree_reference") for b in benches} - {None}
    if refs:
        out += [
            "",
            f"Agreement reference: `{', '.join(sorted(refs))}`; ✔ = asserted before timing (float32 / "
            "float64 relative difference of the hypergradient, ‖a − b‖ / ‖b‖).",
        ]
        infos = [b.get("extra_info", {}) for b in benches]
        tol = next((e for e in infos if "agree_tolerance_float32" in e), None)
        if tol:
            out[-1] += (
                f" Asserted tolerance: {sci(tol['agree_tolerance_float32'])} (float32) / "
                f"{sci(tol['agree_tolerance_float64'])} (float64)."
            )
    return out


def memory_table(benches: list[dict[str, Any]]) -> list[str]:
    rows = [
        b
        for b in benches
        if "peak_saved_bytes" in b.get("extra_info", {}) or "memory_note" in b.get("extra_info", {})
    ]
    if not rows:
        return []
    ref = reference_of(benches)
    ref_peak = next((b["extra_info"].get("peak_saved_bytes") for b in rows if name_of(b) == ref), None)
    # The CPU allocator's peak (profiler memory events) is recorded for workloads that need it only.
    alloc = any({"cpu_alloc_peak_bytes", "cpu_alloc_note"} & set(b["extra_info"]) for b in rows)
    ref_alloc = next((b["extra_info"].get("cpu_alloc_peak_bytes") for b in rows if name_of(b) == ref), None)
    head = "| contestant | peak saved MB | ÷ ours full | all saves MB | CUDA peak MB |"
    rule = "|---|--:|--:|--:|--:|"
    if alloc:
        head += " CPU allocator peak MB | ÷ ours full |"
        rule += "--:|--:|"
    out = [head, rule]
    for b in rows:
        e = b["extra_info"]
        cuda = f"{e['cuda_peak_bytes'] / MB:.1f}" if "cuda_peak_bytes" in e else "—"
        if "peak_saved_bytes" not in e:
            line = f"| {name_of(b)} | {e['memory_note']} | | | {cuda} |"
        else:
            peak = e["peak_saved_bytes"]
            rel = f"{peak / ref_peak:.2f}" if ref_peak else "—"
            line = f"| {name_of(b)} | {peak / MB:.2f} | {rel} | {e['total_saved_bytes'] / MB:.2f} | {cuda} |"
        if alloc:
            a = e.get("cpu_alloc_peak_bytes")
            if a is None:
                line += f" {e.get('cpu_alloc_note', '—')} | |"
            else:
                line += f" {a / MB:.2f} | {f'{a / ref_alloc:.2f}' if ref_alloc else '—'} |"
        out.append(line)
    return out


def _race(benches: list[dict[str, Any]], name: str) -> float | None:
    for b in benches:
        if name_of(b) == name:
            return b.get("extra_info", {}).get("race_ratio_to_reference")
    return None


def _peak(benches: list[dict[str, Any]], name: str) -> float | None:
    for b in benches:
        if name_of(b) == name:
            return b.get("extra_info", {}).get("peak_saved_bytes")
    return None


def _alloc(benches: list[dict[str, Any]], name: str) -> float | None:
    for b in benches:
        if name_of(b) == name:
            return b.get("extra_info", {}).get("cpu_alloc_peak_bytes")
    return None


def highlights(all_groups: OrderedDict[str, list[dict[str, Any]]]) -> list[str]:
    """Sentences computed from the interleaved ratios (so they change when the numbers do)."""
    out: list[str] = []
    for group, benches in all_groups.items():
        ref = reference_of(benches)
        if ref is None:
            continue
        label = group.split(":")[0]
        peers = [b for b in benches if b.get("extra_info", {}).get("role") == "peer"]
        for b in peers:
            e = b["extra_info"]
            r, against = e.get("race_ratio_to_reference"), ref
            if e.get("race_ratio_to_unrolled") is not None and e.get("agree_reference") == UNROLLED_REF:
                # closed-form workloads: an unrolling peer is compared with our unroll, not our implicit
                r, against = e["race_ratio_to_unrolled"], e.get("agree_reference", ref)
            if r is None:
                continue
            verdict = "ours faster" if r > 1 else "ours slower"
            out.append(
                f"- {label}: `{name_of(b)}` takes {r:.2f}× the time of `{against}` ({verdict}; interleaved)."
            )
        for b in benches:
            e = b.get("extra_info", {})
            if e.get("role") == "floor" and e.get("race_ratio_to_reference"):
                r = e["race_ratio_to_reference"]
                line = f"- {label}: `{name_of(b)}` takes {r:.3f}× the time of `{ref}` (1/{1 / r:.1f})"
                fwd = e.get("race_ratio_to_forward_floor")
                if fwd is not None and abs(fwd - 1) > 1e-12:
                    line += f", {fwd:.3f}× the bare forward inner loop"
                out.append(line + ".")
        ck = f"{ref} checkpoint"
        r_ck, p_ck, p_ref = _race(benches, ck), _peak(benches, ck), _peak(benches, ref)
        if r_ck and p_ck and p_ref:
            out.append(
                f"- {label}: checkpointing costs {r_ck:.2f}× the time and holds {p_ck / p_ref:.2f}× the "
                f"saved-tensor bytes at peak ({p_ref / p_ck:.1f}× less memory)."
            )
        fm = "ours Forward (forward-mode unroll)"
        r_fm, a_fm, a_ref = _race(benches, fm), _alloc(benches, fm), _alloc(benches, ref)
        if r_fm:
            line = f"- {label}: forward-mode unrolling (`Forward`) takes {r_fm:.2f}× the time of `{ref}`"
            if a_fm and a_ref:
                line += f" and peaks at {a_fm / a_ref:.2f}× its CPU allocator bytes"
            out.append(line + ".")
        fwd = _race(benches, "ours Implicit CG20 forward-HVP")
        if fwd:
            out.append(
                f"- {label}: forward-over-reverse HVPs take {fwd:.2f}× the time of reverse-over-reverse."
            )
    return out


def accuracy_section(path: Path) -> list[str]:
    if not path.exists():
        return [f"(Not generated yet: run `python -m benchmarks.accuracy_cost --out {path.parent}/`.)"]
    return [
        f"Written by `python -m benchmarks.accuracy_cost` to [`{path.name}`]({path.name}) "
        f"(figure: [`{path.with_suffix('.png').name}`]({path.with_suffix('.png').name})).",
        "",
        f"![hypergradient relative error against wall time]({path.with_suffix('.png').name})",
    ]


def existing_notes(path: Path) -> str:
    if not path.exists():
        return DEFAULT_NOTES
    text = path.read_text(encoding="utf-8")
    a, b = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if a < 0 or b < a:
        return DEFAULT_NOTES
    return text[a + len(NOTES_BEGIN) : b].strip("\n") or DEFAULT_NOTES


def render(data: dict[str, Any], json_path: str, out_path: Path, notes: str, write_plots: bool = True) -> str:
    all_groups = groups(data)
    kinds = report_extra.by_kind(data)
    lines = [
        "# Benchmarks: speed, memory and accuracy against torchopt and higher",
        "",
        f"<!-- Generated by `python -m benchmarks.report {json_path} {out_path}` from the pytest-benchmark "
        "JSON. Edit only the notes block; everything else is rewritten on each run. -->",
        "",
        "## How to reproduce",
        "",
        "```bash",
        "make bench          # pytest benchmarks --benchmark-only → benchmarks/results.json; then",
        "                    # python -m benchmarks.accuracy_cost → docs/accuracy_cost.{md,png}; then",
        "                    # python -m benchmarks.report → docs/benchmarks.md and docs/benchmarks/*.png",
        "                    # (about 17 min on the 2-core CPU, one thread: 15 pytest + 2 accuracy_cost)",
        "WORSTFORGET_BENCH_THREADS=1 make bench  # one torch thread: what the tables below used (shared CPU)",
        "WORSTFORGET_BENCH_DEVICE=cuda make bench   # or: make bench ARGS='--device cuda'",
        "python -m benchmarks.accuracy_cost --out docs/   # docs/accuracy_cost.md and docs/accuracy_cost.png",
        "make test           # also runs benchmarks/ once as a smoke test (--benchmark-disable: no timing)",
        "```",
        "",
        "Options (via `ARGS=...`): `--device`, `--threads`, `--race-rounds` (interleaved rounds, "
        "default 25), `--bench-rounds` (pytest-benchmark rounds, default 15), `--race-budget` (interleaved "
        "seconds per workload at most, default 60) and `--bench-budget` (pytest-benchmark seconds per "
        "contestant at most, default 6): slow workloads get fewer rounds, never under 3. Each benchmark "
        "first asserts, untimed, that its hypergradient equals the reference contestant's (a race between "
        "two different computations is worthless) and measures the autograd graph's saved-tensor bytes; "
        "then all contestants of the workload race interleaved; then pytest-benchmark times each one.",
        "",
        "## Machine",
        "",
        *machine_section(data),
        "",
        *report_extra.targets_section(kinds),
    ]
    for group, benches in all_groups.items():
        lines += [f"## {group}", "", *timing_table(benches), ""]
    mem = [(g, memory_table(b)) for g, b in all_groups.items()]
    mem = [(g, t) for g, t in mem if t]
    if mem:
        lines += [
            "## Memory: bytes the autograd graph holds",
            "",
            "Counted with `torch.autograd.graph.saved_tensors_hooks` over one call: every tensor saved for "
            "backward, once per distinct storage (the data matrix saved by all T steps counts once), "
            "released when the graph frees it. *Peak* is the most alive at once; *all saves* adds every "
            "save (checkpointing saves again while it recomputes). Device-independent; on CUDA the "
            "allocator's peak is added. *CPU allocator peak* (where shown; CPU runs) is the most bytes "
            "torch's CPU allocator held at once during the call, above its level at the start, from the "
            "torch profiler's memory events: every tensor, temporaries included, and it sees inside "
            "`torch.func` transforms, which the hooks cannot.",
            "",
        ]
        for group, table in mem:
            lines += [f"**{group.split(':')[0]}**", "", *table, ""]
    hl = highlights(all_groups)
    if hl:
        lines += ["## Highlights (computed from the tables)", "", *hl, ""]
    lines += report_extra.scaling_section(kinds, out_path.parent, write_plots)
    lines += report_extra.search_section(kinds)
    lines += report_extra.overhead_section(kinds)
    lines += report_extra.rte_section(kinds)
    lines += [
        "## Accuracy against cost",
        "",
        *accuracy_section(out_path.parent / "accuracy_cost.md"),
        "",
        "## Reading",
        "",
        NOTES_BEGIN,
        notes,
        NOTES_END,
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("out", help="markdown file to write, e.g. docs/benchmarks.md")
    args = parser.parse_args(argv)
    try:
        data = load(args.results)
    except (OSError, ValueError) as exc:
        print(f"benchmarks.report: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_atomic(out, render(data, args.results, out, existing_notes(out)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
