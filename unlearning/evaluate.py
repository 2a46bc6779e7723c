"""Unlearning methods on one forget set, against Retrain: ``evaluate_methods(prepared, methods)``.

For the task of a `unlearning.setup.Prepared` (D_f, D_r = pool ∖ D_f, D_test): Retrain (the reference,
trained from the original's initialisation on D_r; cached), the original model θ_o, and every method run from
θ_o (each in a block seeded by ``seed``), with the metrics UA, RA, TA, MIA-Efficacy in percent
(`unlearning.metrics.evaluate`), run time in seconds, and

    gap(method) = ¼ Σ_{M ∈ {UA, RA, TA, MIA}} |M(method) − M(Retrain)|      (`unlearning.metrics.avg_gap`)

``worstforget evaluate`` is the command over it; the stress test runs it once per forget set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import metrics
from .rng import seeded

__all__ = ["COLUMNS", "build_methods", "default_methods", "evaluate_methods", "method_row"]

#: The columns of every row: metrics in percent, Avg. Gap to Retrain, run time in seconds.
COLUMNS = ("UA", "RA", "TA", "MIA", "avg_gap", "seconds")
#: Reference rows of every report: not names a tested method may take.
RESERVED = ("original", "retrain")


def default_methods() -> list[str]:
    """Every registry method but Retrain (the reference every row is compared with)."""
    from .methods import REGISTRY

    return [name for name in REGISTRY if name != "retrain"]


def build_methods(
    methods: Sequence[Any], hparams: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """Each spec of ``methods`` (a registry name, a `Method`, or ``"pkg.module:Attr"``;
    `unlearning.methods.resolve`) built with ``hparams[spec]`` (keyed by the spec as given, or by the
    method's name). ``ValueError`` for an empty list, an unresolvable spec, a name in `RESERVED`, repeated
    names, or hyper-parameters for a method that is not listed."""
    from .methods import resolve

    if not methods:
        raise ValueError("methods is empty: name at least one unlearning method (e.g. ft,rl,salun)")
    given = {str(k).lower(): dict(v) for k, v in (hparams or {}).items()}
    used: set[str] = set()
    built = []
    for spec in methods:
        spec = spec.strip() if isinstance(spec, str) else spec
        plain = resolve(spec)
        keys = [k for k in (str(spec).lower(), plain.name.lower()) if k in given]
        hp = given[keys[0]] if keys else {}
        used.update(keys)
        built.append(resolve(spec, **hp) if hp else plain)
    names = [m.name for m in built]
    for name in names:
        if name in RESERVED:
            raise ValueError(
                f"{name!r} is a reference row of every report, not a method to test: leave it out of methods"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"two methods share the name {repeated[0]!r} (names: {', '.join(names)}); list each once, or "
            "give your own a distinct `name` (e.g. a subclass with name = 'my_ft')"
        )
    unused = sorted(set(given) - used)
    if unused:
        raise ValueError(f"hyper-parameters given for {unused}, which are not among the methods {names}")
    return built


def _row(model: Any, task: Any, seconds: float, reference: Mapping[str, float] | None) -> dict[str, float]:
    row = {k: float(v) for k, v in metrics.evaluate(model, task).items()}
    row["avg_gap"] = 0.0 if reference is None else metrics.avg_gap(row, reference)
    row["seconds"] = float(seconds)
    return row


def run_method(method: Any, model: nn.Module, task: Any) -> Any:
    """``method.unlearn(model, task)``, checked: a method that raises (other than ``FloatingPointError``, a
    divergence), returns something without a ``model`` ``nn.Module`` and ``seconds``, or a model whose
    parameters differ in names or shapes from ``model`` (another architecture) is a ``ValueError`` naming
    the method and the fix: a user's method fails in one line, never silently or with a traceback. A
    result whose weights equal ``model``'s (``epochs=0``: nothing was unlearned) is said by a warning."""
    name = getattr(method, "name", repr(method))
    try:
        result = method.unlearn(model, task)
    except (FloatingPointError, KeyboardInterrupt):
        raise
    except Exception as err:
        text = " ".join(str(err).split())
        raise ValueError(
            f"method {name}: unlearn(model, task) raised {type(err).__name__}: {text}; fix the method "
            "(WORSTFORGET_DEBUG=1 shows the traceback)"
        ) from err
    got = getattr(result, "model", None)
    if not isinstance(got, nn.Module) or isinstance(getattr(result, "seconds", None), bool):
        raise ValueError(
            f"method {name}: unlearn(model, task) returned {type(result).__name__}, not an Unlearned "
            "(model=nn.Module, seconds=float): return unlearning.methods.Unlearned(model, seconds)"
        )
    if not isinstance(result.seconds, (int, float)):
        raise ValueError(f"method {name}: unlearn returned seconds={result.seconds!r}: return a number")
    want = {k: tuple(v.shape) for k, v in model.named_parameters()}
    have = {k: tuple(v.shape) for k, v in got.named_parameters()}
    if want != have:
        raise ValueError(
            f"method {name}: unlearn returned a model of another architecture ({len(have)} parameter "
            f"tensors, {len(want)} expected, or other shapes): return the unlearned copy of the model given"
        )
    if all(torch.equal(a, b) for a, b in zip(model.parameters(), got.parameters())):
        warnings.warn(
            f"method {name}: unlearn returned the original model's weights unchanged (no step taken: "
            "epochs=0 or everything masked?); its row is the original model's",
            stacklevel=2,
        )
    return result


def method_row(prepared: Any, method: Any, reference: Mapping[str, float], seed: int) -> dict[str, float]:
    """One row: ``method`` unlearns ``prepared.task`` from θ_o in a block seeded by ``seed`` (on the
    experiment's device); its metrics, ``avg_gap`` to the ``reference`` row (Retrain's) and ``seconds``.
    ``FloatingPointError`` when the method diverged: a NaN/inf loss (raised by the method) or non-finite
    weights left in the model."""
    with seeded(int(seed), prepared.device):
        result = run_method(method, prepared.original, prepared.task)
    bad = [name for name, p in result.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:  # a loss can stay finite while a step overflows the weights: the same failure as a NaN loss
        raise FloatingPointError(
            f"{method.name}: unlearning left non-finite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''})"
        )
    return _row(result.model, prepared.task, result.seconds, reference)


def evaluate_methods(
    prepared: Any,
    methods: Sequence[Any] | None = None,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Retrain, the original model and each of ``methods`` (default `default_methods`; see `build_methods`)
    on ``prepared.task`` (module docstring).

    Returns ``{"rows": {"original": row, "retrain": row, name: row, ...}, "methods": [names],
    "hparams": {name: values}}``, each row holding `COLUMNS`. ``seed`` (default ``prepared.seed``) seeds each
    method's run, so a row equals ``worstforget unlearn`` with the same seed. ``progress(message)`` is called
    before each model is trained or run.
    """
    built = build_methods(default_methods() if methods is None else methods, hparams)
    seed = int(prepared.seed if seed is None else seed)
    say = progress or (lambda _message: None)
    task = prepared.task
    say("Retrain")
    retrain_model, retrain_seconds = prepared.retrain()
    retrain = _row(retrain_model, task, retrain_seconds, None)
    rows = {"original": _row(prepared.original, task, prepared.original_seconds, retrain), "retrain": retrain}
    for method in built:
        say(method.name)
        rows[method.name] = method_row(prepared, method, retrain, seed)
    return {
        "rows": rows,
        "methods": [m.name for m in built],
        "hparams": {m.name: dict(m.hparams()) if hasattr(m, "hparams") else {} for m in built},
    }
