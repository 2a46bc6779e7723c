"""worstforget's unlearning package: data, models, methods, metrics, worst-case search and the stress test.

``unlearning.stress_test(...)`` (`unlearning.stress.stress_test`) is imported on first use, so that
``import unlearning`` stays light."""

from typing import Any

__all__ = ["stress_test"]


def __getattr__(name: str) -> Any:
    if name == "stress_test":
        from unlearning.stress import stress_test

        return stress_test
    raise AttributeError(f"module 'unlearning' has no attribute {name!r}")
