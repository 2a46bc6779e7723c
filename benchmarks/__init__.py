"""Speed and accuracy-vs-cost benchmarks of `bilevel` against torchopt and higher.

Not part of the test suite (``make test`` runs ``tests/`` only). ``make bench`` runs the pytest-benchmark
suites here and writes ``docs/benchmarks.md`` with `benchmarks.report`; ``python -m benchmarks.accuracy_cost``
writes ``docs/accuracy_cost.md`` and ``docs/accuracy_cost.png``. The device is ``--device`` (pytest) or the
environment variable ``WORSTFORGET_BENCH_DEVICE`` (default ``cpu``).
"""
