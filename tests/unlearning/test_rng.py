"""`seeded` leaves the caller's random state as it was and seeds like ``torch.manual_seed`` on the CPU."""

from __future__ import annotations

import torch

from unlearning.rng import seeded


def test_seeded_restores_the_global_state_and_matches_manual_seed():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(7):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))
