"""Latency, throughput, memory and per-op time of a model on one or more engines.

Each configuration (model x backend x threads x batch) runs in its own fresh process:
its peak RSS is then its own (not the sum of every engine loaded so far), engines do not
share thread pools or caches, and a native crash in one engine becomes an error for that
configuration instead of killing the command.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.errors import NativeCrashError, ShipyardError
from shipyard.profile import OpTime


@dataclass(frozen=True)
class BenchConfig:
    model: str
    backend: str | None = None
    threads: int | None = None
    batch: int = 1
    options: tuple = ()   # runner options as (key, value) pairs, e.g. (("precision", "bf16"),) on OpenVINO


@dataclass
class BenchResult:
    model: str
    backend: str
    threads: int | None
    batch: int
    runs: int
    warmup: int
    latency_ms: dict[str, float]
    throughput_per_s: float
    flops: float | None
    gflops_per_s: float | None
    peak_rss_bytes: int
    load_ms: float
    samples_ms: list[float] = field(default_factory=list)
    profile: list[OpTime] | None = None
    profile_note: str | None = None

    @property
    def label(self) -> str:
        threads = f"{self.threads}t" if self.threads else "default threads"
        return f"{Path(self.model).name} {self.backend} {threads} b{self.batch}"

    def to_json(self, samples: bool = False) -> dict:
        out = asdict(self)
        if not samples:
            out.pop("samples_ms")
        return out


def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "min": float(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std()),
    }


_IN_WORKER = False  # a spawned measurement worker: the parent shows the progress (one line, no races)


class _Runs:
    """The timed runs of one in-process measurement as counted progress (a spawned worker draws
    none: its parent's bar counts the configurations)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.n, self.shown = total, label, 0, 0.0

    def update(self) -> None:
        self.n += 1
        now = time.monotonic()
        if not _IN_WORKER and (now - self.shown > 0.2 or self.n == self.total):  # no lock taken per run
            from shipyard import progress

            progress.inner(self.label, self.n, self.total, unit="run")
            self.shown = now


def _flops(model: str) -> float | None:
    from shipyard.inspection import inspect_model

    try:
        return inspect_model(model).flops
    except ShipyardError:
        return None


def _peak_rss() -> int:
    """This process's peak resident memory in bytes.

    Linux's VmHWM belongs to the current address space, so it starts afresh in a spawned
    worker; ``ru_maxrss`` survives fork+exec and would report the parent's peak instead.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(config: BenchConfig, runs: int = 50, warmup: int = 5, profile: bool = False,
            inputs: list[str] | None = None, seed: int = 0, shapes: dict | None = None,
            mapping: dict | None = None) -> BenchResult:
    """Benchmark one configuration in this process."""
    from shipyard.compare import model_feeds
    from shipyard.runtimes import open_runner

    start = time.perf_counter()
    with open_runner(config.model, backend=config.backend, threads=config.threads, **dict(config.options)) as runner:
        load_ms = (time.perf_counter() - start) * 1e3
        feeds = model_feeds(runner.signature, inputs, seed, config.batch, shapes, mapping)
        guard.stage(f"benchmarking {config.model} on {runner.backend}")
        samples = []
        bar = _Runs(warmup + runs, f"{Path(config.model).name} {runner.backend}")
        for _ in range(warmup):
            runner.run(feeds)
            bar.update()
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run(feeds)
            samples.append((time.perf_counter() - t0) * 1e3)
            bar.update()
        backend = runner.backend
    batch = next((int(v.shape[0]) for v in feeds.values() if v.ndim), config.batch)
    stats = latency_stats(samples)
    per_sample = _flops(config.model)
    flops = per_sample * batch if per_sample else None
    result = BenchResult(
        config.model, backend, config.threads, batch, runs, warmup, stats,
        throughput_per_s=batch * 1e3 / stats["mean"], flops=flops,
        gflops_per_s=flops / (stats["p50"] * 1e-3) / 1e9 if flops else None,
        peak_rss_bytes=_peak_rss(), load_ms=load_ms, samples_ms=samples,
    )
    if profile:
        from shipyard.profile import profile_ops

        result.profile, result.profile_note = profile_ops(config, feeds, min(runs, 20))
    return result


def _child(config: BenchConfig, kwargs: dict, conn, parent: int) -> None:
    """Body of the worker process: measure, send back a result or an error (never raise)."""
    global _IN_WORKER
    from shipyard import progress

    guard.die_with(parent)  # a killed bench takes its measurement with it (it could run for hours)

    _IN_WORKER = True
    progress.off()
    try:
        payload = {"ok": measure(config, **kwargs).to_json(samples=True)}
    except ShipyardError as exc:
        payload = {"error": exc.message, "hint": exc.hint, "type": exc.__class__.__name__}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        payload = {"error": f"internal error: {exc.__class__.__name__}: {exc}", "hint": None, "type": "ShipyardError"}
    conn.send(json.dumps(payload))
    conn.close()


def measure_isolated(config: BenchConfig, **kwargs) -> BenchResult:
    """:func:`measure` in a fresh (spawned, not forked) process.

    Spawned, because forking a process that already runs TensorFlow's or onnxruntime's thread
    pools can deadlock the child; a ShipyardError or a native crash comes back as an error.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    proc = ctx.Process(target=_child, args=(config, kwargs, child_conn, os.getpid()), daemon=True)
    proc.start()
    child_conn.close()
    text = None
    try:
        text = parent_conn.recv()
    except EOFError:
        pass  # the worker died without answering
    proc.join()
    if text is None:
        import signal

        code = proc.exitcode or 0
        name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        raise NativeCrashError(f"{config.model}: the {config.backend or 'default'} runtime crashed ({name}) while benchmarking",
                               hint="the model is probably corrupt or unsupported by this runtime; try another --backend")
    payload = json.loads(text)
    if "error" in payload:
        from shipyard import errors

        cls = getattr(errors, payload["type"], ShipyardError)
        if not (isinstance(cls, type) and issubclass(cls, ShipyardError)) or cls is errors.MissingDependencyError:
            cls = ShipyardError  # its message and hint are already complete
        raise cls(payload["error"], payload["hint"])
    data = payload["ok"]
    data["profile"] = [OpTime(**p) for p in data["profile"]] if data.get("profile") else data.get("profile")
    return BenchResult(**data)


def bench(configs: list[BenchConfig], isolate: bool = True, **kwargs) -> list[BenchResult]:
    from shipyard import progress

    run = measure_isolated if isolate else measure
    results = []
    for i, c in enumerate(configs):  # the terminal bar: which configuration of how many, the rate, the time left
        threads = f"{c.threads}t" if c.threads else "default threads"
        what = f"{Path(c.model).name} {c.backend or 'default engine'} {threads} b{c.batch}"
        guard.stage(f"benchmarking {i + 1} of {len(configs)}: {what}")
        progress.count("benchmarking", i, len(configs), unit="config", detail=what)
        results.append(run(c, **kwargs))
    progress.done()
    return results


def ratios(results: list[BenchResult]) -> list[float]:
    """Median latency of each result relative to the first (1.0 = as fast; 2.0 = twice as slow)."""
    base = results[0].latency_ms["p50"] if results else math.nan
    return [r.latency_ms["p50"] / base for r in results]
