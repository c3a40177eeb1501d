"""Run a model and its rewritten copy on the same inputs and compare them (shared by
``transform`` and ``quantize``)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping

import numpy as np

from shipyard.compare import OutputDiff, diff
from shipyard.errors import ShipyardError
from shipyard.model import Model, tensor_name


class VerificationError(ShipyardError):
    """The rewritten model computes something else than the original, beyond tolerance."""

    exit_code = 1


def collect_outputs(model: Model, feeds: Iterable[Mapping[str, np.ndarray]], threads: int | None = None,
                    backend: str | None = None) -> dict[str, np.ndarray]:
    """Every output over every feed, concatenated along the batch axis."""
    from shipyard.runtimes import open_runner

    parts: dict[str, list[np.ndarray]] = {}
    with open_runner(model, backend=backend, threads=threads) as runner:
        for feed in feeds:
            for name, value in runner.run(feed).items():
                parts.setdefault(tensor_name(name), []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) if v[0].ndim else np.stack(v) for k, v in parts.items()}


def compare_outputs(ref: dict[str, np.ndarray], new: dict[str, np.ndarray], atol: float, rtol: float) -> list[OutputDiff]:
    """Diff outputs by name; when names differ (a renamed graph), pair them by position."""
    pairs = [(k, ref[k], new[k]) for k in ref if k in new]
    if len(pairs) != len(ref):
        pairs = [(k, ref[k], new[k2]) for k, k2 in zip(ref, new)]
    out = []
    for name, a, b in pairs:
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            continue
        out.append(diff(name, a.astype(np.float32), b.astype(np.float32), atol=atol, rtol=rtol))
    return out


def median_ms(fn, runs: int = 30, warmup: int = 2) -> float:
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
    """Median latency of one run on the model's engine."""
    from shipyard.runtimes import open_runner

    with open_runner(model, backend=backend, threads=threads) as runner:
        return median_ms(lambda: runner.run(feed), runs)


def lossy_passed(d: OutputDiff, min_cosine: float = 0.99) -> bool:
    """For rewrites that change numbers on purpose: the output keeps its direction and its argmax."""
    if d.nonfinite or d.shape_ref != d.shape_other:
        return False
    return d.cosine >= min_cosine and (d.argmax_agreement is None or d.argmax_agreement >= 0.9)
