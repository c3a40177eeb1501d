"""Median wall time of a call: the one timing helper of quantize, ship and the benchmarks."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np

from shipyard.model import Model


def median_ms(fn: Callable[[], object], runs: int = 30, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def latency_ms(model: Model, feed: Mapping[str, np.ndarray], runs: int = 30, threads: int | None = None,
               backend: str | None = None) -> float:
    """Median latency of one run of ``model`` on its engine."""
    from shipyard.runtimes import open_runner

    with open_runner(model, backend=backend, threads=threads) as runner:
        return median_ms(lambda: runner.run(feed), runs)
