"""A method's result is checked where every command runs it (`unlearning.evaluate.run_method`): failures
are one-line ValueErrors naming the method, an unchanged model is said (issue 14)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from unlearning.evaluate import run_method
from unlearning.methods import FT, Unlearned, make


@pytest.fixture(scope="module")
def prepared(cache_dir):
    from unlearning.setup import prepare

    return prepare("digits", "mlp", "random:0.1", seed=0, cache_dir=cache_dir)


class _Returns(FT):
    name = "mine"

    def __init__(self, make_result):
        super().__init__()
        self.make_result = make_result

    def unlearn(self, model, task):
        return self.make_result(model)


def _raise(model):
    raise RuntimeError("out of memory\non two lines")


@pytest.mark.parametrize(
    "make_result, words",
    [
        (lambda m: None, "returned NoneType"),
        (lambda m: m, "returned MLP"),
        (lambda m: Unlearned(torch.nn.Linear(2, 2), 0.0), "another architecture"),
        (lambda m: Unlearned(copy.deepcopy(m), "fast"), "seconds='fast'"),
        (_raise, "raised RuntimeError: out of memory on two lines"),
    ],
)
def test_a_failing_method_is_a_one_line_value_error(prepared, make_result, words):
    with pytest.raises(ValueError, match=words) as info:
        run_method(_Returns(make_result), prepared.original, prepared.task)
    assert str(info.value).startswith("method mine:") and "\n" not in str(info.value)


def test_divergence_stays_a_floating_point_error(prepared):
    def diverge(model):
        raise FloatingPointError("loss became nan")

    with pytest.raises(FloatingPointError):
        run_method(_Returns(diverge), prepared.original, prepared.task)


def test_an_unchanged_model_is_said(prepared):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_method(make("ft", epochs=0), prepared.original, prepared.task)
        run_method(make("ft", epochs=1), prepared.original, prepared.task)
    said = [str(w.message) for w in caught if "unchanged" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("method ft:")
