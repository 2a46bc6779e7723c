"""Method names → classes, and ``make(name, **hparams)``."""

from __future__ import annotations

from typing import Any

from unlearning.methods.base import Method
from unlearning.methods.boundary import BE, BS
from unlearning.methods.finetune import FT
from unlearning.methods.fisher import FF
from unlearning.methods.gradient_ascent import GA
from unlearning.methods.influence import IU
from unlearning.methods.last_layers import CFk, EUk
from unlearning.methods.random_label import RL
from unlearning.methods.retrain import Retrain
from unlearning.methods.salun import SalUn, SalUnSoft
from unlearning.methods.scrub import SCRUB
from unlearning.methods.sparse import L1Sparse

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Retrain, FT, GA, RL, IU, L1Sparse, BS, BE, SCRUB, EUk, CFk, SalUn, SalUnSoft, FF)
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


def resolve(spec: Any, **hparams: Any) -> Any:
    """One method from what a user may name: a `Method` object (returned as is; anything with ``name`` and
    ``unlearn(model, task)`` qualifies), a registry name (``make(spec, **hparams)``), or ``"pkg.module:Attr"``
    where ``Attr`` is a method class or a zero-argument factory (called with ``hparams``) or an instance.

    Raises ``ValueError`` naming the spec and the fix when it is none of these.
    """
    if not isinstance(spec, str):
        if isinstance(spec, type):
            spec = spec(**hparams)
        elif hparams:
            raise ValueError(f"hyper-parameters {sorted(hparams)} given for an already built method {spec!r}")
        return _checked(spec, repr(spec))
    text = spec.strip()
    if ":" not in text:
        return make(text, **hparams)
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise ValueError(f"method {spec!r}: expected a registry name or 'package.module:ClassName'")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"method {spec!r}: cannot import module {module_name!r} ({err}); is it on PYTHONPATH?"
        ) from None
    except Exception as err:  # the user's module itself fails: a SyntaxError, or any error at import
        raise ValueError(
            f"method {spec!r}: importing module {module_name!r} failed with {_describe(err)}; fix the module "
            "(WORSTFORGET_DEBUG=1 shows the traceback)"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"method {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "unlearn")):
        try:
            obj = obj(**hparams)
        except TypeError as err:
            raise ValueError(f"method {spec!r}: calling {attr}(**{hparams}) failed: {err}") from None
        except Exception as err:  # the user's constructor or factory raised
            raise ValueError(
                f"method {spec!r}: building it with {attr}(**{hparams}) raised {_describe(err)}; "
                "fix the method"
            ) from None
    elif hparams:
        raise ValueError(f"method {spec!r} is an instance: it takes no hyper-parameters {sorted(hparams)}")
    return _checked(obj, spec)


def _describe(err: BaseException) -> str:
    """An exception as one line: ``Type: message`` (a SyntaxError with its file and line)."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({err.filename}, line {err.lineno})"
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _checked(method: Any, what: str) -> Any:
    name = getattr(method, "name", None)
    if not callable(getattr(method, "unlearn", None)) or not isinstance(name, str) or not name:
        raise ValueError(
            f"method {what}: not an unlearning method; it needs a non-empty str attribute 'name' and "
            "unlearn(model, task) -> Unlearned (subclass unlearning.methods.Method)"
        )
    return method
