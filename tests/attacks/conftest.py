"""Digits fixtures: many small MLPs (64-64-10) trained once per session, full batch, as one batched ensemble.

Split of the 1,797 bundled digits (shuffled with seed 0):

* ``pool``   [0, 1200):    the audited examples. 16 reference models each train on 40 random pool examples
  (deliberately overfit: tiny training set, 300 full-batch Adam steps, no regularisation).
* ``pop``    [1200, 1500): population / test set, seen by no model.
* ``held``   [1500, 1797): the "null" model trains on its first 200; it sees neither pool nor pop.
* unlearning: train = pool[:200], forget = its first 40, retain = the other 160, test = pop[:150];
  8 "original" models (train, seeds 0-7) and 16 "retrained" models (retain only, seeds 0-15).
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from attacks import predict_logits, random_keep

HIDDEN, STEPS, LR = 64, 300, 1e-2


def train_mlps(x: torch.Tensor, y: torch.Tensor, subsets: list[np.ndarray], seed: int = 0) -> list[nn.Module]:
    """Train one 64-64-10 MLP per index subset, all at once (batched weights, padded and masked rows).

    Full batch, Adam(lr=1e-2), no weight decay, STEPS steps: each model's update is exactly what training it
    alone would give (Adam is elementwise and the models share no parameters).
    """
    m, s, d, k = len(subsets), max(len(i) for i in subsets), x.shape[1], int(y.max()) + 1
    idx = torch.zeros(m, s, dtype=torch.long)
    w = torch.zeros(m, s)
    for j, sub in enumerate(subsets):
        idx[j, : len(sub)] = torch.as_tensor(sub)
        w[j, : len(sub)] = 1.0 / len(sub)
    xs, ys = x[idx], y[idx]
    g = torch.Generator().manual_seed(seed)

    def init(fan_in, shape):  # nn.Linear's default U(-1/√fan_in, 1/√fan_in)
        return ((torch.rand(shape, generator=g) * 2 - 1) / fan_in**0.5).requires_grad_()

    w1, b1 = init(d, (m, d, HIDDEN)), init(d, (m, 1, HIDDEN))
    w2, b2 = init(HIDDEN, (m, HIDDEN, k)), init(HIDDEN, (m, 1, k))
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=LR)
    for _ in range(STEPS):
        logits = torch.relu(xs @ w1 + b1) @ w2 + b2
        ce = nn.functional.cross_entropy(logits.reshape(-1, k), ys.reshape(-1), reduction="none")
        loss = (ce.reshape(m, s) * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    models = []
    for j in range(m):
        net = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, k))
        with torch.no_grad():
            net[0].weight.copy_(w1[j].T)
            net[0].bias.copy_(b1[j, 0])
            net[2].weight.copy_(w2[j].T)
            net[2].bias.copy_(b2[j, 0])
        models.append(net.eval())
    return models


@dataclass
class Digits:
    x: torch.Tensor
    y: torch.Tensor
    pool: np.ndarray
    pop: np.ndarray
    held: np.ndarray
    keep: np.ndarray  # (16, 1200): reference model m trained on pool example i
    refs: list
    null: nn.Module
    train: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray
    originals: list
    retrains: list
    logits: torch.Tensor  # (n_models, 1797, 10) of refs + [null] + originals + retrains, in that order

    def probs(self, model_index: int, rows: np.ndarray) -> torch.Tensor:
        return torch.softmax(self.logits[model_index, rows], -1)


@pytest.fixture(scope="session")
def digits() -> Digits:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest, and the machine is shared
    try:
        xd, yd = load_digits(return_X_y=True)
        perm = np.random.default_rng(0).permutation(len(xd))
        x = torch.tensor(xd[perm] / 16.0, dtype=torch.float32)
        y = torch.tensor(yd[perm], dtype=torch.long)
        pool, pop, held = np.arange(0, 1200), np.arange(1200, 1500), np.arange(1500, 1797)
        keep = random_keep(len(pool), 16, pkeep=40 / len(pool), seed=1, balanced=False)
        train, test = pool[:200], pop[:150]
        forget, retain = train[:40], train[40:]
        subsets = [pool[k] for k in keep] + [held[:200]] + [train] * 8 + [retain] * 16
        models = train_mlps(x, y, subsets, seed=0)
        logits = torch.stack([predict_logits(m, x) for m in models])
        return Digits(
            x=x,
            y=y,
            pool=pool,
            pop=pop,
            held=held,
            keep=keep,
            refs=models[:16],
            null=models[16],
            train=train,
            forget=forget,
            retain=retain,
            test=test,
            originals=models[17:25],
            retrains=models[25:41],
            logits=logits,
        )
    finally:
        torch.set_num_threads(threads)
