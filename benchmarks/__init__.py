"""Speed and accuracy-vs-cost benchmarks of `bilevel` against torchopt and higher.

``make bench`` runs the pytest-benchmark suites here, ``python -m benchmarks.accuracy_cost`` (which writes
``docs/accuracy_cost.md`` and ``docs/accuracy_cost.png``) and `benchmarks.report` (``docs/benchmarks.md`` and
the plots in ``docs/benchmarks/``). ``make test`` also collects this folder, as a smoke test: under
``--benchmark-disable`` every contestant runs once at small sizes and every agreement is asserted, untimed.
The device is ``--device`` (pytest) or the
environment variable ``WORSTFORGET_BENCH_DEVICE`` (default ``cpu``).
"""
