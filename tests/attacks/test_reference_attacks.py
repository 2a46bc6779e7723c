"""LiRA, RMIA and UnlearningLiRA on simulated statistics with a known separation.

Signals are drawn as φ = d_i + Δ·member + σ·ε with a per-example difficulty d_i spread far wider than σ. A
per-example test that knows μ_OUT(i) exactly separates members with AUC Φ(Δ / (√2 σ)). With K reference values
per side the median estimate of μ adds variance π σ² / (2K) (asymptotic variance of the median), so the
expected AUCs below are Φ(Δ / √(2σ² + π σ²/(2K))) (offline, centred on μ_OUT) and
Φ(Δ / √(2σ² + π σ²/(4K))) (online, centred on (μ_IN + μ_OUT)/2).
"""

import math

import numpy as np
import pytest

from attacks import RMIA, LiRA, UnlearningLiRA, random_keep
from attacks import metrics as M


def Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


SIGMA, DELTA, N, M_REFS = 1.0, 1.5, 4000, 64
K = M_REFS // 2  # balanced keep: 32 IN and 32 OUT references per example


def simulate(delta=DELTA, n_queries=1, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 4, N)
    keep = random_keep(N, M_REFS + 1, pkeep=0.5, seed=seed + 1, balanced=False)
    noise = rng.normal(0, SIGMA, (M_REFS + 1, N, n_queries))
    phi = d[None, :, None] + delta * keep[:, :, None] + noise
    ref, target = phi[:M_REFS], phi[M_REFS]
    # references balanced per example (every example: K IN, K OUT), the target a fresh random half
    ref_keep = random_keep(N, M_REFS, pkeep=0.5, seed=seed + 2)
    ref = d[None, :, None] + delta * ref_keep[:, :, None] + noise[:M_REFS]
    squeeze = (lambda a: a[..., 0]) if n_queries == 1 else (lambda a: a)
    return squeeze(ref), ref_keep, squeeze(target), keep[M_REFS], d


def test_lira_recovers_expected_auc_and_beats_global_threshold():
    ref, keep, target, member, _ = simulate()
    offline = M.auc(LiRA("offline").fit(ref, keep).score(target), member)
    online = M.auc(LiRA("online").fit(ref, keep).score(target), member)
    expected_off = Phi(DELTA / math.sqrt(2 * SIGMA**2 + math.pi * SIGMA**2 / (2 * K)))
    expected_on = Phi(DELTA / math.sqrt(2 * SIGMA**2 + math.pi * SIGMA**2 / (4 * K)))
    assert offline == pytest.approx(expected_off, abs=0.02)
    assert online == pytest.approx(expected_on, abs=0.02)
    # the offline score given only OUT references (keep=None) is the same test
    global_threshold = M.auc(target, member)  # φ itself: the LOSS/confidence attack
    assert global_threshold < 0.65 < offline
    tpr_lira = M.tpr_at_fpr(LiRA("online").fit(ref, keep).score(target), member, 0.01).tpr
    assert tpr_lira > 3 * M.tpr_at_fpr(target, member, 0.01).tpr
    # per-example variance with 32 references per side is also close
    per_example = M.auc(LiRA("online", fix_variance=False).fit(ref, keep).score(target), member)
    assert per_example == pytest.approx(expected_on, abs=0.03)


def test_lira_offline_with_out_only_references_and_queries():
    ref, keep, target, member, d = simulate(n_queries=2, seed=3)
    # two independent queries halve the noise variance of the averaged online LLR: AUC ≈ Φ(Δ/σ)
    online = M.auc(LiRA("online").fit(ref, keep).score(target), member)
    assert online == pytest.approx(Phi(DELTA / math.sqrt(SIGMA**2 + math.pi * SIGMA**2 / (8 * K))), abs=0.02)
    one_query = M.auc(LiRA("online").fit(ref[..., :1], keep).score(target[:, :1]), member)
    assert online > one_query + 0.03
    # offline from OUT models only, passed without keep: same statistics as masking with keep
    rng = np.random.default_rng(4)
    out_only = d[None, :, None] + rng.normal(0, SIGMA, (K, N, 2))
    s = LiRA("offline").fit(out_only).score(target)
    assert M.auc(s, member) > 0.8
    two_sided = LiRA("offline", offline_test="two_sided").fit(out_only).score(target)
    assert 0.5 < M.auc(two_sided, member) < M.auc(s, member)  # unusualness: weaker than the one-sided test


def test_lira_no_signal_gives_chance():
    ref, keep, target, member, _ = simulate(delta=0.0, seed=5)
    n1 = int(member.sum())
    for mode in ("offline", "online"):
        a = M.auc(LiRA(mode).fit(ref, keep).score(target), member)
        assert abs(a - 0.5) < 4 * M.null_auc_std(n1, N - n1), mode


def test_leave_one_out_equals_explicit_split_and_excludes_target():
    ref, keep, *_ = simulate(seed=6)
    ref, keep = ref[:12, :500], keep[:12, :500]
    scores, labels = LiRA("online").leave_one_out(ref, keep, targets=[3, 7])
    others = np.arange(12) != 3
    explicit = LiRA("online").fit(ref[others], keep[others]).score(ref[3])
    np.testing.assert_allclose(scores[0], explicit)
    np.testing.assert_array_equal(labels, keep[[3, 7]])
    # the leak the protocol guards against: the target among its own references inflates the AUC
    leaked = LiRA("online", estimator="mean").fit(ref, keep).score(ref[3])
    honest = LiRA("online", estimator="mean").fit(ref[others], keep[others]).score(ref[3])
    assert M.auc(leaked, keep[3]) > M.auc(honest, keep[3]) + 0.02


def rmia_signals(delta=DELTA, seed=0):
    """p_y = sigmoid(φ) with φ deep in the tail (p ≈ e^φ), where P(x|θ)/P_OUT(x) ≈ e^{Δ·member + σε − c_i}."""
    rng = np.random.default_rng(seed)
    n, z = 3000, 2000
    d = rng.uniform(-20, -12, n)
    dz = rng.uniform(-20, -12, z)
    keep = random_keep(n, M_REFS, pkeep=0.5, seed=seed)
    member = rng.random(n) < 0.5

    def sig(v):
        return 1 / (1 + np.exp(-v))

    ref = sig(d + delta * keep + rng.normal(0, SIGMA, (M_REFS, n)))
    ref_z = sig(dz + rng.normal(0, SIGMA, (M_REFS, z)))
    target = sig(d + delta * member + rng.normal(0, SIGMA, n))
    target_z = sig(dz + rng.normal(0, SIGMA, z))
    return ref, ref_z, keep, target, target_z, member


def test_rmia_recovers_expected_auc():
    ref, ref_z, keep, target, target_z, member = rmia_signals()
    # log P_OUT(x) estimated from K lognormal values: extra variance ≈ (e^{σ²} − 1)/K
    expected = Phi(DELTA / math.sqrt(2 * SIGMA**2 + (math.e - 1) / K))
    offline = M.auc(RMIA("offline", a=1.0).fit(ref, ref_z, keep).score(target, target_z), member)
    assert offline == pytest.approx(expected, abs=0.02)
    online = RMIA("online").fit(ref, ref_z, keep).score(target, target_z)
    assert M.auc(online, member) == pytest.approx(expected, abs=0.03)
    assert (
        M.auc(target, member) < 0.7 < offline - 0.1
    )  # raw confidence is swamped by the per-example difficulty
    assert np.all((online >= 0) & (online <= 1))


def test_rmia_vectorised_score_equals_outer_product():
    ref, ref_z, keep, target, target_z, member = rmia_signals(seed=1)
    for gamma in (0.5, 1.0, 2.0):
        attack = RMIA("offline", a=0.3, gamma=gamma).fit(ref, ref_z, keep)
        rx, rz = attack.ratios(target, target_z)
        brute = ((rx[:, None, 0] / rz[None, :, 0]) > gamma).mean(axis=1)
        np.testing.assert_allclose(attack.score(target, target_z), brute)


def test_rmia_no_signal_gives_chance_and_leave_one_out():
    ref, ref_z, keep, target, target_z, member = rmia_signals(delta=0.0, seed=2)
    a = M.auc(RMIA("offline", a=1.0).fit(ref, ref_z).score(target, target_z), member)
    n1 = int(member.sum())
    assert abs(a - 0.5) < 4 * M.null_auc_std(n1, member.size - n1)
    keep8 = random_keep(ref.shape[1], 8, seed=3)  # every example: 4 IN, 4 OUT among the first 8 models
    scores, labels = RMIA("offline", a=1.0).leave_one_out(ref[:8], ref_z[:8], keep8, targets=[0])
    explicit = RMIA("offline", a=1.0).fit(ref[1:8], ref_z[1:8], keep8[1:8]).score(ref[0], ref_z[0])
    np.testing.assert_allclose(scores[0], explicit)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_unlearning_lira_recovers_expected_auc(delta):
    rng = np.random.default_rng(7)
    n_f, k = 500, 16
    d = rng.normal(0, 4, n_f)

    def draw(shift, count):
        return d + shift + rng.normal(0, SIGMA, (count, n_f))

    attack = UnlearningLiRA()
    result = attack.audit(draw(delta, k), draw(0, k), draw(delta, k), draw(0, k))
    expected = Phi(delta / math.sqrt(2 * SIGMA**2 + math.pi * SIGMA**2 / (4 * k)))
    assert result.scores.shape == (2 * k, n_f) and result.labels[:k].all() and not result.labels[k:].any()
    assert result.auc == pytest.approx(expected, abs=0.03)
    loo = attack.audit(draw(delta, k), draw(0, k))
    assert loo.auc == pytest.approx(expected, abs=0.03)
    assert loo.report.extra["n_models"] == 2 * k and loo.report.extra["n_forget"] == n_f
    acc = result.per_example_accuracy()
    assert acc.shape == (n_f,) and abs(acc.mean() - Phi(delta / (2 * SIGMA))) < 0.05


def test_reference_attack_input_errors():
    ref, keep, target, member, _ = simulate(seed=8)
    with pytest.raises(ValueError, match="online LiRA needs keep"):
        LiRA("online").fit(ref)
    with pytest.raises(ValueError, match="keep must have shape"):
        LiRA("online").fit(ref, keep[:, :10])
    with pytest.raises(ValueError, match="target has shape"):
        LiRA().fit(ref, keep).score(target[:10])
    with pytest.raises(ValueError, match="no IN reference model"):
        LiRA("online").fit(ref, np.zeros_like(keep))
    with pytest.raises(ValueError, match="fix_variance=True"):
        LiRA("online", fix_variance=False).fit(ref[:2], np.stack([np.ones(N, bool), np.zeros(N, bool)]))
    with pytest.raises(ValueError, match="mode must be one of"):
        LiRA("semi")
    with pytest.raises(RuntimeError, match="not fitted"):
        LiRA().score(target)
    with pytest.raises(ValueError, match="list of models: pass the examples"):
        import torch

        LiRA().fit([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match=r"probabilities of the true class"):
        RMIA().fit(ref, ref)  # φ values, not probabilities
    with pytest.raises(ValueError, match="a must be in"):
        RMIA(a=2)
    with pytest.raises(TypeError, match="unexpected argument"):
        LiRA().fit(ref, keep, querys=2)
    with pytest.raises(ValueError, match="held_out"):
        UnlearningLiRA().audit(ref, ref, held_out_unlearned=ref)
