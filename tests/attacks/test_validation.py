"""Bad input raises a clear ValueError naming the argument."""

import numpy as np
import pytest
import torch

import attacks
from attacks import metrics as M
from attacks import signals as S

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6]])
Y = np.array([0, 1, 2])


def test_metric_inputs():
    with pytest.raises(ValueError, match="labels has 2 entries but scores has 3"):
        M.auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="single class: no non-members"):
        M.auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="single class: no members"):
        M.roc_curve([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="0/1"):
        M.auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        M.auc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="max_fpr"):
        M.tpr_at_fpr([0.1, 0.2], [0, 1], 1.5)


def test_probability_inputs():
    with pytest.raises(ValueError, match=r"in \[0, 1\].*softmax"):
        S.confidence(P * 3 - 1, Y)
    with pytest.raises(ValueError, match="sum to 1"):
        S.confidence(P * 0.5, Y)
    with pytest.raises(ValueError, match="labels has 2 entries but the matching probabilities have 3"):
        S.confidence(P, Y[:2])
    with pytest.raises(ValueError, match="class 3 but the probabilities have only 3 columns"):
        S.confidence(P, [0, 1, 3])
    with pytest.raises(ValueError, match="integer class labels"):
        S.confidence(P, [0.5, 1, 2])
    with pytest.raises(ValueError, match="signal must be one of"):
        S.membership_signal(P, Y, "margin")
    # float32 round-off within tolerance is fine
    p32 = torch.softmax(torch.randn(50, 10), -1)
    assert S.confidence(p32, torch.zeros(50, dtype=torch.long)).shape == (50,)


def test_attack_inputs():
    with pytest.raises(ValueError, match="feature must be one of"):
        attacks.SVCMIA(feature="loss")
    with pytest.raises(ValueError, match="C must be a positive"):
        attacks.SVCMIA(C=0)
    with pytest.raises(ValueError, match="gamma"):
        attacks.SVCMIA(gamma="big")
    with pytest.raises(ValueError, match="nonmember_probs is empty"):
        attacks.SVCMIA().fit(P, Y, np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="labels for member_probs has 2 entries"):
        attacks.SVCMIA().fit(P, Y[:2], P, Y)
    with pytest.raises(ValueError, match="sum to 1"):
        attacks.SVCMIA().fit(P, Y, P * 0.9, Y)
    with pytest.raises(RuntimeError, match="not fitted"):
        attacks.SVCMIA().efficacy(P, Y)
    with pytest.raises(ValueError, match=r"first \|test\|"):
        attacks.mia_efficacy(P[:1], Y[:1], P, Y, P, Y)
    with pytest.raises(ValueError, match="signal must be one of"):
        attacks.ThresholdMIA(signal="correctness")
