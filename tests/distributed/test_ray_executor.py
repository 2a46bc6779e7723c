"""The stress grid on Ray (`unlearning.distributed.ray_executor`) against the local executor, on a local Ray
instance started here (``ray.init(num_cpus=2, include_dashboard=False)``, shut down after): the same report,
bit for bit (seconds aside), also when the driver is interrupted and rerun; a diverging method is a failed
row, as locally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")

from unlearning import stress_test  # noqa: E402

SMALL = dict(upper_steps=3, lower_steps=4)
# two seeds (a summary over seeds) and GA at a rate that diverges (failed rows)
GRID = dict(methods=["ft", "ga"], seeds=[0, 1], method_hparams={"ga": {"lr": 1e6}}, **SMALL)
# tuning: the candidates, then the pick each method's rows wait for
TUNED = dict(methods=["ft", "ga"], seeds=[0], tune=True, **SMALL)


def _without_seconds(value):
    """A report (or a saved set) with its wall-clock times (``seconds``, ``*_seconds``) left out."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


@pytest.fixture(scope="module")
def cluster():
    # Lenient health checks: on a loaded 2-core machine a raylet can miss Ray's default heartbeats, and Ray
    # then ends the driver, which here is the pytest process itself.
    lenient = {
        "health_check_failure_threshold": 30,
        "health_check_timeout_ms": 30000,
        "health_check_period_ms": 3000,
    }
    ray.init(num_cpus=2, include_dashboard=False, _system_config=lenient)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The model cache of this module's runs: the local runs fill it, so the Ray runs train nothing again
    but run every other unit."""
    return tmp_path_factory.mktemp("cache")


def _local(tmp_path_factory, cache, grid):
    out = tmp_path_factory.mktemp("local")
    return cache, out, stress_test(out=out, cache_dir=str(cache), **grid)


@pytest.fixture(scope="module")
def local(tmp_path_factory, cache):
    """The local executor's run of `GRID`: (model cache, output folder, report)."""
    return _local(tmp_path_factory, cache, GRID)


@pytest.fixture(scope="module")
def local_tuned(tmp_path_factory, cache):
    """The local executor's run of `TUNED`."""
    return _local(tmp_path_factory, cache, TUNED)


def _same_as_local(local, out, report, grid):
    _, local_out, want = local
    assert report["complete"]
    assert _without_seconds(report) == _without_seconds(want)  # rows, tuning, searches, hparams, summary
    on_disk = json.loads((out / "report.json").read_text())
    assert _without_seconds(on_disk) == _without_seconds(json.loads((local_out / "report.json").read_text()))
    for seed in grid["seeds"]:  # the sets the driver saved
        name = f"sets/seed{seed}.json"
        saved, there = (json.loads((folder / name).read_text()) for folder in (out, local_out))
        assert _without_seconds(saved) == _without_seconds(there)


def test_the_local_executor_does_not_import_ray(local, monkeypatch):
    """With ``import ray`` made to fail, the CLI builds and a local stress test runs (cached models)."""
    from unlearning.cli import build_parser

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    build_parser()
    report = stress_test(cache_dir=str(local[0]), **dict(GRID, methods=["ft"], seeds=[0], method_hparams={}))
    assert report["complete"] and report["config"]["methods"][0]["name"] == "ft"


def test_ray_grid_equals_the_local_one(cluster, local, tmp_path):
    report = stress_test(out=tmp_path, cache_dir=str(local[0]), executor="ray", **GRID)
    failed = [r for r in report["results"] if r["avg_gap"] is None]
    assert failed and all(r["method"] == "ga" and r["error"] for r in failed)  # diverged: recorded
    assert [r["method"] for r in report["results"][:4]] == ["retrain", "original", "ft", "ga"]
    _same_as_local(local, tmp_path, report, GRID)


def test_interrupted_ray_run_resumes_to_the_local_result(cluster, local_tuned, tmp_path):
    """With tuning: the driver stops (KeyboardInterrupt) after 6 finished units; what it wrote is kept as is,
    its queued tasks are cancelled, and a rerun computes only the rest and ends with the local report."""
    calls = []

    def stop_after_six(done, total, message):
        calls.append(message)
        if len(calls) == 6:
            raise KeyboardInterrupt

    kwargs = dict(out=tmp_path, cache_dir=str(local_tuned[0]), executor="ray", **TUNED)
    with pytest.raises(KeyboardInterrupt):
        stress_test(progress=stop_after_six, **kwargs)
    first = json.loads((tmp_path / "report.json").read_text())
    assert not first["complete"] and 0 < len(first["results"]) + len(first["tuning"]) < 2 * 4 + 6
    seen = []
    report = stress_test(progress=lambda done, total, message: seen.append(done), **kwargs)
    assert sorted(seen) == list(range(len(seen)))  # the count goes on over the reused units
    kept = {(r["selection"], r["seed"], r["method"]): r for r in report["results"]}
    for row in first["results"]:  # kept, timings included
        assert kept[row["selection"], row["seed"], row["method"]] == row
    assert report["hparams"] == local_tuned[2]["hparams"] and len(report["tuning"]) == 6
    _same_as_local(local_tuned, tmp_path, report, TUNED)


def test_a_failing_task_stops_nothing_else_and_raises_as_locally(cluster, cache, tmp_path):
    """Tuning where every GA candidate diverges: locally a ValueError before any method row; on Ray the
    pick task raises it, GA's rows (which wait for it) fail, everything else finishes and is recorded, and
    the driver raises the local error."""
    grid = dict(TUNED, method_hparams={"ga": {"lr": 1e6}})
    with pytest.raises(ValueError, match="every candidate of ga diverged") as local_error:
        stress_test(out=tmp_path / "local", cache_dir=str(cache), **grid)
    with pytest.raises(ValueError) as ray_error:
        stress_test(out=tmp_path / "ray", cache_dir=str(cache), executor="ray", **grid)
    assert str(ray_error.value) == str(local_error.value)
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    rows = {(r["selection"], r["method"]) for r in report["results"]}
    assert rows == {(s, m) for s in ("random", "worst") for m in ("retrain", "original", "ft")}
    assert not report["complete"]


def test_a_killed_driver_resumes_to_the_local_result(cluster, local_tuned, tmp_path):
    """A driver process (on this module's Ray instance) killed with SIGKILL once its first row is written:
    nothing cancels its tasks and nothing else is written; the same run started again ends with the local
    report, keeping what the killed driver wrote."""
    options = dict(out=str(tmp_path), cache_dir=str(local_tuned[0]), executor="ray", **TUNED)
    code = (
        "import json, sys, ray, torch; from unlearning import stress_test; torch.set_num_threads(1)\n"
        "ray.init(address=sys.argv[1]); stress_test(**json.loads(sys.argv[2]))\n"
    )
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "WORSTFORGET_PROGRESS": "0"}
    driver = subprocess.Popen([sys.executable, "-c", code, address, json.dumps(options)], env=env)
    report, deadline = tmp_path / "report.json", time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if report.exists() and json.loads(report.read_text())["results"]:
                break
            time.sleep(0.1)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    first = json.loads(report.read_text())
    assert not first["complete"] and first["results"]
    final = stress_test(**{**options, "out": tmp_path})
    kept = {(r["selection"], r["seed"], r["method"]): r for r in final["results"]}
    for row in first["results"]:
        assert kept[row["selection"], row["seed"], row["method"]] == row
    assert final["tuning"][: len(first["tuning"])] == first["tuning"]
    _same_as_local(local_tuned, tmp_path, final, TUNED)
