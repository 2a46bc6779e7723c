"""attacks.signals: hand-computed values, stability at p = 0 and p = 1, model helpers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from attacks import signals as S

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
Y = np.array([0, 1])


def test_hand_computed_values():
    np.testing.assert_allclose(S.confidence(P, Y), [0.7, 0.3])
    np.testing.assert_allclose(S.loss(P, Y), [-math.log(0.7), -math.log(0.3)])
    np.testing.assert_allclose(S.correctness(P, Y), [1.0, 0.0])
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    h1 = -(0.1 * math.log(0.1) + 0.3 * math.log(0.3) + 0.6 * math.log(0.6))
    np.testing.assert_allclose(S.entropy(P), [h0, h1])
    # Song & Mittal: −(1−p_y) log p_y − Σ_{k≠y} p_k log(1−p_k)
    m0 = -0.3 * math.log(0.7) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9)
    m1 = -0.7 * math.log(0.3) - 0.1 * math.log(0.9) - 0.6 * math.log(0.4)
    np.testing.assert_allclose(S.modified_entropy(P, Y), [m0, m1])
    np.testing.assert_allclose(S.logit_scaled_confidence(P, Y), [math.log(0.7 / 0.3), math.log(0.3 / 0.7)])
    oriented = S.membership_signal(P, Y, "m_entropy")
    np.testing.assert_allclose(oriented, [-m0, -m1])
    np.testing.assert_allclose(S.membership_signal(P, Y, "loss"), -S.loss(P, Y))


def test_modified_entropy_orders_confident_wrong_above_confident_right():
    p = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]])
    y = np.array([0, 0])
    h = S.entropy(p)
    assert h[0] == pytest.approx(h[1])  # plain entropy cannot tell them apart
    me = S.modified_entropy(p, y)
    assert me[1] > 10 * me[0]


def test_compat_m_entropy_reproduces_optml_helper():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 4))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.r_[np.arange(4), rng.integers(0, 4, 36)]  # every class occurs
    expected = -((1 - p) * np.log(p)).sum(1)
    np.testing.assert_allclose(S.modified_entropy(p, y, compat=True), expected)
    assert not np.allclose(S.modified_entropy(p, y), expected)
    # with classes {0} only: class 0 weighted by 1 − p, others by p
    y0 = np.zeros(40, dtype=int)
    w = np.where(np.arange(4) == 0, 1 - p, p)
    np.testing.assert_allclose(S.modified_entropy(p, y0, compat=True), -(w * np.log(p)).sum(1))


def test_stable_at_zero_and_one():
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    y = np.array([0, 0, 2])
    for f in (S.confidence, S.loss, S.logit_scaled_confidence, S.correctness, S.modified_entropy):
        v = f(p, y)
        assert np.all(np.isfinite(v)), f.__name__
    assert np.all(np.isfinite(S.entropy(p)))
    assert S.entropy(p)[0] == 0.0
    phi = S.logit_scaled_confidence(p, y)
    assert phi[0] == pytest.approx(-math.log(S.PROB_FLOOR)) and phi[1] == pytest.approx(
        math.log(S.PROB_FLOOR)
    )
    assert S.modified_entropy(p, y)[0] == 0.0  # a perfect prediction has zero modified entropy
    assert S.modified_entropy(p, y)[1] > 60  # a certain wrong prediction is maximal, but finite


def test_phi_from_logits_is_exact_at_extremes():
    z = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0], [2.0, 1.0, 0.5]], dtype=torch.float32)
    y = torch.tensor([0, 0, 1])
    phi = S.logit_scaled_confidence_from_logits(z, y)
    assert np.all(np.isfinite(phi))
    np.testing.assert_allclose(phi[:2], [1e4, -1e4], rtol=1e-9)
    p = torch.softmax(z.double(), -1).numpy()
    assert phi[2] == pytest.approx(math.log(p[2, 1] / (1 - p[2, 1])))
    np.testing.assert_allclose(S.logit_scaled_confidence(p[2:], y[2:]), phi[2:])
    # with queries: (n, A, K)
    zz = torch.stack([z, z + 1.0], dim=1)
    np.testing.assert_allclose(S.logit_scaled_confidence_from_logits(zz, y)[:, 1], phi)
    np.testing.assert_allclose(S.softmax(z[2:]), p[2:], rtol=1e-6)


def test_predict_helpers_restore_modes_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[0].eval()  # mixed modes must come back exactly
    x = torch.randn(37, 4)
    a = S.predict_probs(model, x, batch_size=5)
    b = S.predict_probs(model, x, batch_size=100)
    assert model.training and model[1].training and not model[0].training
    torch.testing.assert_close(a, b)  # eval mode: dropout off, deterministic
    torch.testing.assert_close(a.sum(-1), torch.ones(37))
    ds = torch.utils.data.TensorDataset(x, torch.zeros(37, dtype=torch.long))
    torch.testing.assert_close(S.predict_logits(model, ds, batch_size=8), S.predict_logits(model, x))
    q = S.predict_logits(model, x, queries=(lambda t: t, lambda t: -t))
    assert q.shape == (37, 2, 3)
    torch.testing.assert_close(q[:, 1], S.predict_logits(model, -x))
    assert S.hflip(torch.arange(6.0).reshape(1, 1, 2, 3))[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
