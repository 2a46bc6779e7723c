"""`unlearning.methods.resolve`: registry names, objects and ``module:Attr`` specs, with clear errors."""

from __future__ import annotations

import pytest

from unlearning.methods import FT, SalUn, resolve


def test_registry_name_object_and_import_spec():
    assert isinstance(resolve("ft"), FT)
    assert resolve("salun", lr=0.01).lr == 0.01
    mine = FT(lr=0.02)
    assert resolve(mine) is mine
    assert isinstance(resolve("unlearning.methods:SalUn", lr=0.03), SalUn)
    assert resolve("unlearning.methods:SalUn", lr=0.03).lr == 0.03
    assert isinstance(resolve(SalUn), SalUn)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown unlearning method 'nope'"),
        ("no_such_pkg.mod:X", "cannot import module 'no_such_pkg.mod'"),
        ("unlearning.methods:Nope", "has no attribute 'Nope'"),
        ("math:pi", "not an unlearning method"),
        (":X", "expected a registry name or 'package.module:ClassName'"),
    ],
)
def test_bad_specs_name_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve(spec)


def test_hparams_for_a_built_method_are_refused():
    with pytest.raises(ValueError, match="already built"):
        resolve(FT(), lr=0.1)
