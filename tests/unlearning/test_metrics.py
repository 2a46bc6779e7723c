import pytest
import torch
from torch import nn

from unlearning import metrics
from unlearning.data_types import ArrayData, Task


class Lookup(nn.Module):
    """Predicts class ``table[i]`` for the input whose first pixel is i (a hand-made model)."""

    def __init__(self, table, num_classes=3, confidence=5.0):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table))
        self.k, self.c = num_classes, confidence
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = x.flatten(1)[:, 0].round().long()
        return nn.functional.one_hot(self.table[idx], self.k).float() * self.c + self.dummy


def _data(ids, labels):
    return ArrayData(torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1), torch.tensor(labels))


def test_accuracy_of_a_hand_made_model():
    model = Lookup([0, 1, 2, 0, 1])
    data = _data([0, 1, 2, 3, 4], [0, 1, 1, 0, 2])  # correct on 0, 1, 3 -> 60%
    assert metrics.accuracy(model, data) == pytest.approx(60.0)
    assert metrics.accuracy(model, data, batch_size=2) == pytest.approx(60.0)
    model.train()
    metrics.accuracy(model, data)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy(model, data.subset(torch.tensor([], dtype=torch.long)))


def test_evaluate_ua_ra_ta():
    # pool of 10 (ids 0..9), forget = {0, 1, 2, 3}, test ids 10..14
    table = [0] * 15
    labels_pool = [0, 0, 1, 1, 0, 0, 0, 0, 0, 1]  # the model predicts 0 everywhere
    labels_test = [0, 0, 0, 1, 1]
    pool = _data(list(range(10)), labels_pool)
    test = _data(list(range(10, 15)), labels_test)
    task = Task(pool=pool, forget_index=torch.tensor([0, 1, 2, 3]), val=test, test=test, num_classes=3)
    got = metrics.evaluate(Lookup(table), task, mia=False)
    assert got == pytest.approx({"UA": 50.0, "RA": 100 * 5 / 6, "TA": 60.0})


def test_mia_separates_a_memorising_model_from_an_unlearned_one(digits_random):
    p = digits_random
    original = metrics.evaluate(p.original, p.task)
    assert set(original) == {"UA", "RA", "TA", "MIA"}
    assert all(0 <= v <= 100 for v in original.values())
    retrain, _ = p.retrain()
    after = metrics.evaluate(retrain, p.task)
    assert after["UA"] > original["UA"]  # Retrain forgets what the original memorised
    assert after["MIA"] >= original["MIA"]


def test_avg_gap():
    a = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0, "seconds": 3.0}
    b = {"UA": 12.0, "RA": 89.0, "TA": 84.0, "MIA": 19.0, "seconds": 100.0}
    assert metrics.avg_gap(a, b) == pytest.approx((2 + 1 + 4 + 1) / 4)
    assert metrics.avg_gap(a, a) == 0.0
    with pytest.raises(ValueError, match="MIA"):
        metrics.avg_gap({"UA": 1, "RA": 1, "TA": 1}, b)
