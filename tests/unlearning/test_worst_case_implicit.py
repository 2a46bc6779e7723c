"""The worst-case search's proximal implicit mode (hypergradient against finite differences through the
converged lower level, CG warm starts across upper steps), its per-step history, and the data fingerprint of a
result (a set is refused on another dataset, split or pool)."""

from __future__ import annotations

import json

import pytest
import torch

import bilevel
from bilevel import CappedSimplex
from tests.unlearning.test_methods_helpers import K, tiny_model, tiny_task
from unlearning import splits
from unlearning.methods import make
from unlearning.worst_case import DEFAULT_PROXIMAL, SearchResult, build_problem, make_solver, search


def _tiny_problem(classwise: bool, rho: float = 1.0):
    model, task = tiny_model(), tiny_task()
    bound = make("ft").bind(model, task)
    theta0, buffers = bound.initial_state()
    problem = build_problem(
        bound, task.pool, buffers, gamma=0.3, classwise=classwise, num_classes=K, proximal=rho, anchor=theta0
    )
    size, k = (K, 1.0) if classwise else (len(task.pool), 12.0)
    g = torch.Generator().manual_seed(1)
    w = CappedSimplex(k).project(torch.rand(size, generator=g, dtype=torch.float64) * 2 * k / size)
    return bound, buffers, theta0, problem, w


# ------------------------------------------------------------------------------- proximal implicit
@pytest.mark.parametrize("classwise", [False, True])
def test_proximal_implicit_hypergradient_matches_finite_differences(classwise):
    """float64, a tiny tanh MLP, FT's weighted lower level + (ρ/2)‖θ − θ_o‖², solved to convergence (200
    full-batch GD steps): the search's implicit hypergradient equals central differences of F(w) =
    f(θ*(w), w) through the Newton-refined lower solution, and the dense implicit solve."""
    _, _, theta0, problem, w = _tiny_problem(classwise)
    solver = make_solver("implicit", inner_steps=200, inner_lr=0.5, damping=0.0, cg_iters=200, cg_tol=1e-12)
    check = bilevel.check_hypergrad(problem, solver, theta0, {"w": w}, max_fd_coords=0, fd_directions=3)
    assert check.rel_error_fd < 1e-7, check
    assert check.rel_error_exact < 1e-10, check
    info = check.info["solver_info"]
    assert info["inner_grad_norm"] < 1e-12 and not info["indefinite"]


def test_proximal_term_is_part_of_the_lower_level():
    """inner_loss gains exactly (ρ/2)‖θ − θ_o‖²; ρ > 0 needs the anchor θ_o, and ρ must be >= 0."""
    bound, buffers, theta0, plain, w = _tiny_problem(False, rho=0.0)
    _, _, _, prox, _ = _tiny_problem(False, rho=2.5)
    g = torch.Generator().manual_seed(3)
    theta = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta0.items()}
    dist2 = sum(float(((theta[k] - theta0[k]) ** 2).sum()) for k in theta)
    diff = float(prox.inner_loss(theta, {"w": w}, None) - plain.inner_loss(theta, {"w": w}, None))
    assert diff == pytest.approx(0.5 * 2.5 * dist2, rel=1e-12)
    with pytest.raises(ValueError, match="anchor"):
        build_problem(bound, tiny_task().pool, buffers, proximal=1.0)
    with pytest.raises(ValueError, match="proximal"):
        build_problem(bound, tiny_task().pool, buffers, proximal=-1.0, anchor=theta0)


def test_implicit_defaults_and_bad_proximal(digits_random):
    r = search(digits_random, "ft", hypergrad="implicit", upper_steps=1, inner_steps=2, progress=False)
    assert r.config["proximal"] == DEFAULT_PROXIMAL and r.config["damping"] == 0.0
    assert r.config["warm_start"] is True
    first = search(digits_random, "ft", upper_steps=1, inner_steps=2, progress=False)
    assert first.config["proximal"] == 0.0 and first.config["warm_start"] is None
    for kwargs, match in (
        (dict(proximal=-0.5), "proximal"),
        (dict(proximal=float("nan")), "proximal"),
        (dict(warm_start="yes"), "warm_start"),
        (dict(cg_tol=-1.0), "cg_tol"),
    ):
        with pytest.raises(ValueError, match=match):
            search(digits_random, "ft", hypergrad="implicit", progress=False, **kwargs)


# ---------------------------------------------------------------------------------------- warm starts
def _implicit(prepared, warm, **kwargs):
    return search(
        prepared, "ft", hypergrad="implicit", warm_start=warm, inner_steps=5, progress=False, **kwargs
    )


def test_warm_start_cuts_cg_work(digits_random):
    """CG started from the previous upper step's v, where w (hence v) moves little between upper steps,
    needs fewer iterations and fewer Hessian-vector products in total, the one HVP of its initial residual
    included. The warm start carries across binarisation segments."""
    kwargs = dict(upper_steps=6, upper_lr=0.1, binarize_every=3)
    warm, cold = _implicit(digits_random, True, **kwargs), _implicit(digits_random, False, **kwargs)
    assert [h["warm_started"] for h in warm.history] == [False] + [True] * 5
    assert not any(h["warm_started"] for h in cold.history)
    assert warm.totals()["cg_iterations"] < cold.totals()["cg_iterations"]
    assert warm.totals()["hvp"] < cold.totals()["hvp"]
    assert cold.totals()["hvp"] == cold.totals()["cg_iterations"]  # cold: one HVP per CG iteration
    assert warm.totals()["hvp"] == warm.totals()["cg_iterations"] + 5  # + each warm start's residual
    assert all(h["residual"] <= 1e-4 for h in warm.history + cold.history)
    report = warm.to_dict()
    assert report["totals"] == warm.totals() and report["config"]["warm_start"] is True


# -------------------------------------------------------------------------------------------- history
def test_history_records_overlap_with_the_previous_step(digits_random):
    r = search(
        digits_random, "ft", budget=0.1, upper_steps=5, inner_steps=3, binarize_every=2, progress=False
    )
    m = r.indices.numel()
    for h in r.history:
        assert 0.0 <= h["overlap_previous"] <= 1.0
        assert h["overlap_previous"] == pytest.approx(1 - h["changed"] / m)
        assert isinstance(h["objective"], float)
    assert any(h["overlap_previous"] < 1 for h in r.history)  # the set moves


# ------------------------------------------------------------------------------------ result and data
@pytest.fixture(scope="module")
def saved(digits_random, tmp_path_factory):
    result = search(digits_random, "ft", upper_steps=2, inner_steps=2, progress=False)
    return result, result.save(tmp_path_factory.mktemp("wc") / "wc.json")


def test_result_json_names_its_data_method_and_mode(digits_random, saved):
    result, path = saved
    raw = json.loads(path.read_text())
    assert raw["indices"] == result.indices.tolist() and len(raw["weights"]) == len(digits_random.task.pool)
    assert (raw["method"], raw["mode"], raw["budget"]) == ("ft", "first_order", 0.1)
    assert raw["fingerprint"] == {
        "dataset": "digits",
        "split_seed": 0,
        "pool_size": len(digits_random.task.pool),
        "pool_sha256": splits.pool_fingerprint(digits_random.task.pool),
    }
    assert raw["config"]["hypergrad"] == "first_order" and "overlap_previous" in raw["history"][0]
    back = SearchResult.load(path, expect=digits_random)
    assert torch.equal(back.indices, result.indices) and back.fingerprint == raw["fingerprint"]


def test_load_refuses_other_data_and_other_files(digits_random, saved, tmp_path):
    _, path = saved
    here = splits.data_fingerprint(digits_random.task.pool, dataset="digits", split_seed=0)
    with pytest.raises(ValueError, match="split seed 0, not 1: pass --seed 0"):
        SearchResult.load(path, expect={**here, "split_seed": 1})
    with pytest.raises(ValueError, match="dataset digits, not mnist5k: pass --dataset digits"):
        SearchResult.load(path, expect={**here, "dataset": "mnist5k"})
    with pytest.raises(ValueError, match="holds other examples"):
        SearchResult.load(path, expect={**here, "pool_sha256": "0" * 64})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SearchResult.load(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="not a search result"):
        SearchResult.load(tmp_path / "list.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a search result"):
        SearchResult.load(tmp_path / "junk.json")


def test_indices_file_is_refused_on_another_pool(digits_random, saved, tmp_path):
    """`forget_indices` (what ``--forget indices:FILE`` and prepare use) checks the file's fingerprint: the
    same size but other examples is refused, as is another split seed; the right pool is accepted."""
    result, path = saved
    pool = digits_random.task.pool
    assert torch.equal(splits.forget_indices(f"indices:{path}", pool, 0), result.indices)
    raw = json.loads(path.read_text())
    raw["fingerprint"]["pool_sha256"] = "f" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(raw))
    with pytest.raises(
        ValueError, match="forget indices file .* holds other examples.*pass --dataset digits"
    ):
        splits.forget_indices(f"indices:{other}", pool, 0)
    with pytest.raises(ValueError, match="split seed 0, not 3"):
        splits.forget_indices(f"indices:{path}", pool, 3)
    shuffled = pool.subset(torch.arange(len(pool)).flip(0))  # same size and labels, other order
    with pytest.raises(ValueError, match="holds other examples"):
        splits.forget_indices(f"indices:{path}", shuffled, 0)
