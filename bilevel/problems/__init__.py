"""Reference bi-level problems with closed-form hypergradients (``bilevel.md`` §6, P1–P7).

Every factory returns a `ReferenceProblem`: the `BilevelProblem`, a starting point, the outer value to test
at, the exact inner solution, F, the closed-form ∇F and the dense inner Hessian. All take ``seed`` and
``dtype`` (float64 by default) and are deterministic under the seed.

- `ridge` (P1), `quadratic` (P2), `logistic` (P3), `weighted_ridge` (P4), `unrolled_gd_quadratic` (P5),
  `imaml_proximal` (P6);
- P7 edge cases: `scalar_inner`, `multi_tensor`, `saddle`, `nan_outer`;
- `finite_difference(ref, outer, eps)`: central differences of ``ref.value``.

Bi-level examples without a closed form, on data the caller passes as tensors:

- `Reweighting` (data re-weighting of a network: per-sample weights σ(x_i) learned on a validation loss;
  the speed benchmarks' workload and ``worstforget bench --problem mlp-reweight``), `mlp_reweighting` (a
  seeded MLP instance from a pool of rows), `mlp`, `mlp_init`;
- `closed_form_case` / `reweighting_case`: a problem at a given size and device as a `ProfileCase`, ready
  for `bilevel.profile` (what ``worstforget bench`` profiles);
- `cleaning`: data hyper-cleaning (weights on the capped simplex that find mislabelled examples;
  ``worstforget hyperclean``).
"""

from . import cleaning
from ._base import ReferenceProblem, finite_difference
from .cases import CLOSED_FORM, ProfileCase, closed_form_case, reweighting_case
from .edge import multi_tensor, nan_outer, saddle, scalar_inner
from .logistic import logistic
from .quadratic import imaml_proximal, quadratic, unrolled_gd_quadratic
from .reweighting import Reweighting, ReweightingInstance, mlp, mlp_init, mlp_reweighting
from .ridge import ridge, weighted_ridge

__all__ = [
    "CLOSED_FORM",
    "ProfileCase",
    "closed_form_case",
    "reweighting_case",
    "ReferenceProblem",
    "Reweighting",
    "ReweightingInstance",
    "cleaning",
    "finite_difference",
    "imaml_proximal",
    "logistic",
    "mlp",
    "mlp_init",
    "mlp_reweighting",
    "multi_tensor",
    "nan_outer",
    "quadratic",
    "ridge",
    "saddle",
    "scalar_inner",
    "unrolled_gd_quadratic",
    "weighted_ridge",
]
