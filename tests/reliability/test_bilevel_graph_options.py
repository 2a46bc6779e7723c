"""The graph options of issue 12 where users set them: `minimize(graph=...)`, `SearchConfig(graph=...)` and
the CLI's ``--no-graph`` (search and stress). Bad values are clear errors; on CPU nothing changes."""

from __future__ import annotations

import pytest

from bilevel import Implicit, Unrolled, minimize, optim, problems


def test_minimize_graph_values():
    ref = problems.ridge(seed=0)
    solver = Unrolled(optim.SGD(lr=0.1), 3)
    with pytest.raises(ValueError, match="graph must be None, True or False, got 'yes'"):
        minimize(ref.problem, solver, ref.outer, optim.SGD(lr=0.1), 1, inner_init=ref.inner_init, graph="yes")
    with pytest.raises(ValueError, match=r"minimize\(graph=True\): Implicit\(warm_start=True\)"):
        minimize(
            ref.problem,
            Implicit(optim.SGD(lr=0.1), 3),
            ref.outer,
            optim.SGD(lr=0.1),
            1,
            inner_init=ref.inner_init,
            graph=True,
        )
    # on CPU the default (None) is the eager loop: Implicit's warm start is allowed
    res = minimize(
        ref.problem,
        Implicit(optim.SGD(lr=0.1), 3),
        ref.outer,
        optim.SGD(lr=0.1),
        2,
        inner_init=ref.inner_init,
    )
    assert len(res.history) == 2


def test_search_config_graph_field_is_checked_and_not_recorded():
    from unlearning.worst_case import SearchConfig

    assert SearchConfig().graph is None
    assert SearchConfig(graph=False).graph is False
    with pytest.raises(ValueError, match="graph must be None, True or False"):
        SearchConfig(graph="no")
    assert "graph" not in SearchConfig(graph=False).record()
    assert SearchConfig(graph=False).record() == SearchConfig().record()


def test_cli_no_graph_flags_map_onto_the_configs():
    from unlearning.cli import build_parser
    from unlearning.commands.search import search_config
    from unlearning.commands.stress import config_from_args

    parser = build_parser()
    args = parser.parse_args(["search", "--no-graph"])
    assert search_config(args).graph is False
    assert search_config(parser.parse_args(["search"])).graph is None
    stress = config_from_args(parser.parse_args(["stress", "--no-graph"]))
    assert stress.search_options == {"graph": False}
    assert config_from_args(parser.parse_args(["stress"])).search_options in (None, {})
