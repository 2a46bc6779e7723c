"""Population attacks on synthetic probabilities: SVCMIA protocol, Song & Mittal thresholds."""

import numpy as np
import pytest
import torch

from attacks import SVCMIA, LossAttack, ThresholdMIA, mia_efficacy
from attacks import metrics as M
from attacks import signals as S


def make_probs(n, conf_mean, k=5, seed=0, offsets=None):
    """Rows whose true-class probability is about sigmoid(conf_mean (+ class offset) + noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logit = conf_mean + rng.normal(0, 1, n) + (0 if offsets is None else offsets[y])
    p_y = 1 / (1 + np.exp(-logit))
    rest = rng.dirichlet(np.ones(k - 1), n) * (1 - p_y)[:, None]
    p = np.zeros((n, k))
    for i in range(n):
        p[i, np.arange(k) != y[i]] = rest[i]
        p[i, y[i]] = p_y[i]
    return p, y


def test_svcmia_protocol_and_efficacy():
    members, ym = make_probs(300, 3.0, seed=1)
    non, yn = make_probs(300, 0.0, seed=2)
    forget_like_members, yf = make_probs(200, 3.0, seed=3)
    forget_like_test, yt = make_probs(200, 0.0, seed=4)
    svc = SVCMIA().fit(members, ym, non, yn)
    assert svc.efficacy(forget_like_test, yt) > svc.efficacy(forget_like_members, yf) + 0.3
    # torch tensors give the same answer
    svc_t = SVCMIA().fit(torch.tensor(members), torch.tensor(ym), torch.tensor(non), torch.tensor(yn))
    assert svc_t.efficacy(torch.tensor(forget_like_test), torch.tensor(yt)) == svc.efficacy(
        forget_like_test, yt
    )
    # mia_efficacy takes the FIRST |test| retain examples as members
    retain = np.concatenate([members, non])  # the second half would ruin the member set if it were used
    yr = np.concatenate([ym, yn])
    value = mia_efficacy(retain, yr, non, yn, forget_like_test, yt)
    assert value == pytest.approx(svc.efficacy(forget_like_test, yt))
    assert 0.0 <= value <= 1.0
    for feature in SVCMIA.FEATURES:
        e = SVCMIA(feature).fit(members, ym, non, yn).efficacy(forget_like_test, yt)
        assert 0.0 <= e <= 1.0


def test_svcmia_compat_flag_changes_only_m_entropy():
    members, ym = make_probs(200, 3.0, seed=5)
    non, yn = make_probs(200, 0.0, seed=6)
    a = SVCMIA("m_entropy").fit(members, ym, non, yn)
    b = SVCMIA("m_entropy", compat_m_entropy=True).fit(members, ym, non, yn)
    np.testing.assert_allclose(a.features(members, ym)[:, 0], S.modified_entropy(members, ym))
    np.testing.assert_allclose(b.features(members, ym)[:, 0], S.modified_entropy(members, ym, compat=True))


def test_threshold_equals_brute_force_and_per_class_beats_global():
    rng = np.random.default_rng(0)
    v_in, v_out = rng.normal(1, 1, 37), rng.normal(0, 1, 41)
    t, ba = ThresholdMIA.best_threshold(v_in, v_out)
    cands = np.unique(np.r_[v_in, v_out])
    brute = [0.5 * ((v_in >= c).mean() + (v_out < c).mean()) for c in cands]
    assert ba == pytest.approx(max(brute)) and t == cands[int(np.argmax(brute))]
    # classes with different confidence levels: one threshold per class wins
    offsets = np.array([-3.0, -1.5, 0.0, 1.5, 3.0])
    fit_in, yi = make_probs(1000, 1.0, seed=1, offsets=offsets)
    fit_out, yo = make_probs(1000, -0.5, seed=2, offsets=offsets)
    ev_in, ei = make_probs(1000, 1.0, seed=3, offsets=offsets)
    ev_out, eo = make_probs(1000, -0.5, seed=4, offsets=offsets)
    labels = np.r_[np.ones(1000), np.zeros(1000)].astype(int)

    def ba_on_eval(attack):
        pred = np.r_[attack.predict(ev_in, ei), attack.predict(ev_out, eo)]
        return 0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean())

    per_class = ThresholdMIA("confidence").fit(fit_in, yi, fit_out, yo)
    global_ = ThresholdMIA("confidence", per_class=False).fit(fit_in, yi, fit_out, yo)
    assert ba_on_eval(per_class) > ba_on_eval(global_) + 0.03
    scores = np.r_[per_class.score(ev_in, ei), per_class.score(ev_out, eo)]
    assert M.auc(scores, labels) > M.auc(np.r_[S.confidence(ev_in, ei), S.confidence(ev_out, eo)], labels)
    for signal in ThresholdMIA.SIGNALS:
        attack = ThresholdMIA(signal).fit(fit_in, yi, fit_out, yo)
        assert M.auc(np.r_[attack.score(ev_in, ei), attack.score(ev_out, eo)], labels) > 0.6, signal


def test_missing_class_falls_back_to_global_threshold():
    members, ym = make_probs(200, 2.0, seed=7)
    non, yn = make_probs(200, 0.0, seed=8)
    keep = yn != 4  # no non-member of class 4
    attack = ThresholdMIA().fit(members, ym, non[keep], yn[keep])
    assert attack.fallback_classes_ == [4]
    assert attack.thresholds_[4] == attack.global_threshold_


def test_loss_attack_scores_and_threshold():
    members, ym = make_probs(300, 3.0, seed=9)
    non, yn = make_probs(300, 0.0, seed=10)
    attack = LossAttack().fit(members, ym, non, yn)
    np.testing.assert_allclose(attack.score(members, ym), np.log(S.confidence(members, ym)))
    assert attack.predict(members, ym).mean() > attack.predict(non, yn).mean() + 0.5
