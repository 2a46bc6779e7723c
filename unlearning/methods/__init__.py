"""The unlearning methods: one protocol (`Method`: ``unlearn`` and ``lower_loss``), fourteen methods, a
registry.

``make("salun", lr=0.02)`` builds one by name; ``REGISTRY`` maps names to classes; hyper-parameters are the
classes' dataclass fields (``Method.hyperparameters()`` lists defaults, valid ranges and descriptions).
"""

from unlearning.methods.base import Method, NoLowerLevelError, Unlearned
from unlearning.methods.boundary import BE, BS
from unlearning.methods.common import Iterative
from unlearning.methods.finetune import FT
from unlearning.methods.fisher import FF
from unlearning.methods.gradient_ascent import GA
from unlearning.methods.influence import IU, woodfisher_recursion
from unlearning.methods.last_layers import CFk, EUk
from unlearning.methods.random_label import RL
from unlearning.methods.registry import REGISTRY, make, resolve
from unlearning.methods.retrain import Retrain
from unlearning.methods.salun import SalUn, SalUnSoft
from unlearning.methods.scrub import SCRUB
from unlearning.methods.sparse import L1Sparse

__all__ = [
    "NoLowerLevelError",
    "BE",
    "BS",
    "CFk",
    "EUk",
    "FF",
    "FT",
    "GA",
    "IU",
    "Iterative",
    "L1Sparse",
    "Method",
    "REGISTRY",
    "RL",
    "Retrain",
    "SCRUB",
    "SalUn",
    "SalUnSoft",
    "Unlearned",
    "make",
    "resolve",
    "woodfisher_recursion",
]
