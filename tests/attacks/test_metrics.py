"""attacks.metrics against scikit-learn and known answers."""

import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from attacks import metrics as M
from attacks.plots import plot_roc


def _random(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 7, n).astype(float) if ties else rng.normal(size=n)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    return s, y


@pytest.mark.parametrize("n,ties,seed", [(7, True, 0), (60, True, 1), (500, False, 2), (3000, True, 3)])
def test_metrics_equal_sklearn(n, ties, seed):
    s, y = _random(n, seed, ties)
    fpr, tpr, thr = M.roc_curve(s, y)
    fpr2, tpr2, thr2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr2)
    np.testing.assert_allclose(tpr, tpr2)
    np.testing.assert_array_equal(thr[1:], thr2[1:])
    assert math.isinf(thr[0]) and thr[0] > 0
    assert M.auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    # oracle balanced accuracy = max over thresholds, brute force with sklearn's balanced_accuracy_score
    pred = s[None, :] >= np.r_[np.unique(s), np.inf][:, None]  # every threshold at once
    brute = (
        0.5 * ((pred & (y == 1)).sum(1) / (y == 1).sum() + (~pred & (y == 0)).sum(1) / (y == 0).sum())
    ).max()
    assert M.balanced_accuracy(s, y) == pytest.approx(brute, abs=1e-12)
    assert M.membership_advantage(s, y) == pytest.approx(2 * brute - 1, abs=1e-12)
    t = float(np.median(s))
    assert M.balanced_accuracy(s, y, threshold=t) == pytest.approx(skm.balanced_accuracy_score(y, s >= t))
    # TPR at FPR: brute force over sklearn's ROC
    for a in (0.0, 0.01, 0.1, 0.5):
        r = M.tpr_at_fpr(s, y, a)
        assert r.tpr == pytest.approx(tpr2[fpr2 <= a + 1e-15].max())
        assert r.fpr <= a + 1e-12
        assert r.n_members == int(y.sum()) and r.n_nonmembers == int((1 - y).sum())


def test_torch_inputs_accepted():
    s, y = _random(100, 4)
    assert M.auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(M.auc(s, y))


def test_known_answers():
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    perfect = np.r_[np.arange(50) + 100.0, np.arange(50)]
    assert M.auc(perfect, y) == 1.0
    assert M.auc(-perfect, y) == 0.0  # reversed
    assert M.auc(perfect, 1 - y) == 0.0  # labels swapped: 1 - AUC
    assert M.tpr_at_fpr(perfect, y, 0.0).tpr == 1.0
    assert M.balanced_accuracy(perfect, y) == 1.0
    assert M.membership_advantage(perfect, y) == 1.0
    identical = np.zeros(100)
    assert M.auc(identical, y) == 0.5
    assert M.tpr_at_fpr(identical, y, 0.01).tpr == 0.0
    assert M.balanced_accuracy(identical, y) == 0.5
    # strictly increasing transform leaves AUC and TPR@FPR unchanged
    s, yy = _random(400, 5)
    assert M.auc(np.exp(s), yy) == pytest.approx(M.auc(s, yy))
    assert M.tpr_at_fpr(np.exp(s), yy, 0.05).tpr == M.tpr_at_fpr(s, yy, 0.05).tpr


def test_tpr_at_fpr_counts_the_nonmembers_behind_it():
    # 1000 non-members; FPR 1e-3 allows exactly one false positive (<= convention)
    rng = np.random.default_rng(0)
    non = rng.normal(size=1000)
    mem = np.r_[non.max() + 1 + np.arange(10), np.sort(non)[-2] - 0.5 + np.zeros(10)]
    s = np.r_[mem, non]
    y = np.r_[np.ones(20), np.zeros(1000)].astype(int)
    r = M.tpr_at_fpr(s, y, 1e-3)
    assert r.n_false_positives == 1 and r.n_nonmembers == 1000 and r.resolved
    assert r.tpr == 0.5 and r.n_true_positives == 10
    assert float(r) == 0.5 and "1/1000 non-members" in str(r)
    assert not M.tpr_at_fpr(s, y, 1e-4).resolved


def test_gaussian_auc_and_null():
    rng = np.random.default_rng(1)
    n = 4000
    d = 1.0
    s = np.r_[rng.normal(d, 1, n), rng.normal(0, 1, n)]
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    expected = 0.5 * (1 + math.erf(d / 2))  # Φ(d/√2)
    assert abs(M.auc(s, y) - expected) < 3 * M.null_auc_std(n, n)
    null = rng.normal(size=2 * n)
    assert abs(M.auc(null, y) - 0.5) < 4 * M.null_auc_std(n, n)
    assert M.balanced_accuracy(null, y) < 0.5 + 3 / math.sqrt(2 * n)
    assert abs(M.balanced_accuracy(null, y, threshold=0.0) - 0.5) < 0.03


def test_evaluate_report_flattens_pairs():
    s, y = _random(200, 6)
    rep = M.evaluate(s.reshape(2, 100), y.reshape(2, 100), fprs=(0.1,), name="x")
    assert rep.auc == pytest.approx(M.auc(s, y))
    assert rep.tpr_at[0.1].tpr == M.tpr_at_fpr(s, y, 0.1).tpr
    assert rep.n_members + rep.n_nonmembers == 200
    assert "AUC" in str(rep) and rep.as_dict()["auc"] == rep.auc


def test_roc_plot_writes_png(tmp_path):
    s, y = _random(300, 7)
    out = plot_roc({"a": (s, y), "b": (-s, y)}, tmp_path / "roc" / "roc.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="scales"):
        plot_roc({"a": (s, y)}, tmp_path / "x.png", scales=("loglog",))
