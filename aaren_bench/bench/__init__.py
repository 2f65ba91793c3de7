"""The efficiency suite: the paper's streaming figure, the scan kernel, a layer's training step.

Run it with ``aaren-bench bench`` (or ``python -m aaren_bench.bench.suite``); see
:mod:`aaren_bench.bench.suite` for the options and docs/BENCHMARKS.md for the figures.
"""
