"""Method names → classes, and ``make(name, **hparams)``."""

from __future__ import annotations

from typing import Any

from unlearning.methods.base import Method
from unlearning.methods.boundary import BE, BS
from unlearning.methods.finetune import FT
from unlearning.methods.gradient_ascent import GA
from unlearning.methods.influence import IU
from unlearning.methods.last_layers import CFk, EUk
from unlearning.methods.random_label import RL
from unlearning.methods.retrain import Retrain
from unlearning.methods.salun import SalUn, SalUnSoft
from unlearning.methods.scrub import SCRUB
from unlearning.methods.sparse import L1Sparse

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls for cls in (Retrain, FT, GA, RL, IU, L1Sparse, BS, BE, SCRUB, EUk, CFk, SalUn, SalUnSoft)
}


def make(name: str, **hparams: Any) -> Method:
    """The method ``name`` with the given hyper-parameters (the others at their defaults).

    Raises ``ValueError`` for an unknown name (listing the known ones), an unknown hyper-parameter (listing
    the
    method's), or an invalid value (naming its valid range).
    """
    key = str(name).lower()
    if key not in REGISTRY:
        raise ValueError(f"unknown unlearning method {name!r}: choose one of {', '.join(REGISTRY)}")
    cls = REGISTRY[key]
    known = cls.hyperparameters()
    for k in hparams:
        if k not in known:
            raise ValueError(f"{key}: unknown hyper-parameter {k!r}; valid: {', '.join(known) or '(none)'}")
    return cls(**hparams)
