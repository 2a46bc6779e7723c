"""bilevel: hypergradients for min_λ f(θ*(λ), λ) s.t. θ*(λ) = argmin_θ g(θ, λ), on torch.func.

Solvers (`Solver` subclasses; one method ``hypergrad(problem, inner_init, outer, inner_data, outer_data)``):
`Unrolled` (reverse mode through the inner trajectory; truncated; checkpointed), `Forward` (forward-mode
unrolling, for few outer entries), `Implicit` (implicit function theorem with linear solvers `CG`, `Neumann`,
`FixedPoint`, `Direct`) and `FirstOrder` (partial, DARTS-style identity, F2SA penalty). `minimize` runs the
projected outer loop (`Box`, `CappedSimplex`, `top_k`); `check_hypergrad` verifies a solver on your problem;
`profile` measures several solvers' time, peak memory, HVP count and hypergradient error; `problems` holds
reference problems with closed forms; `optim` holds differentiable functional optimizers; `FunctionalModule`
makes an ``nn.Module`` a pure function with an explicit BatchNorm-buffer policy.
"""

from . import optim, problems
from .batched import Batched, batched
from .check import HypergradCheck, check_hypergrad
from .constraints import Box, CappedSimplex, top_k
from .first_order import FirstOrder
from .forward import Forward
from .graphed import Graphed, graphed
from .hypergrad import Hypergrad, Solver
from .implicit import Implicit
from .inner import solve_inner
from .linear_solvers import CG, Direct, FixedPoint, IndefiniteHessianError, Neumann
from .modules import FunctionalModule
from .outer_loop import MinimizeResult, minimize
from .problem import BilevelProblem
from .profile import Profile, ProfileRow, profile
from .unrolled import Unrolled

__all__ = [
    "BilevelProblem",
    "Solver",
    "Unrolled",
    "Implicit",
    "FirstOrder",
    "Forward",
    "CG",
    "Neumann",
    "FixedPoint",
    "Direct",
    "IndefiniteHessianError",
    "Box",
    "CappedSimplex",
    "top_k",
    "minimize",
    "solve_inner",
    "MinimizeResult",
    "check_hypergrad",
    "HypergradCheck",
    "profile",
    "Profile",
    "ProfileRow",
    "Hypergrad",
    "graphed",
    "Graphed",
    "batched",
    "Batched",
    "FunctionalModule",
    "optim",
    "problems",
]
