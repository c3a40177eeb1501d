"""Paired, interleaved measurement: which of a few close contenders is faster *now*.

Figures taken minutes apart on a shared machine differ by more than close engines do (ResNet50,
LiteRT int8 on 2 threads: 23.8 ms inside ``ship``, 34.2 ms in the table a few minutes later).
Here each contender lives in a spawned process of its own (its engine, thread pools and caches
its own, loaded once and warmed up), and the parent asks them in turn for short bursts, in
alternating order (A B, then B A, ...) while the others wait idle on their pipes: a busy moment
falls on neighbouring bursts of every contender, and the ratio of two bursts of the same cycle
cancels it. The median of those per-cycle ratios is the figure a close call is decided by.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shipyard.errors import NativeCrashError, ShipyardError

CYCLES = 21   # odd: the median is one cycle's ratio
BURST = 10    # timed calls per burst (plus one untimed call after waiting idle)
WARMUP = 5


@dataclass
class Paired:
    """Per cycle, per contender: the median of that contender's burst in that cycle (ms)."""
    labels: list[str]
    cycles_ms: list[list[float]]
    burst: int

    def series(self, i: int) -> list[float]:
        return [cycle[i] for cycle in self.cycles_ms]

    def ratios(self, i: int, j: int) -> list[float]:
        """Contender i's burst over contender j's, cycle by cycle (< 1: i was faster)."""
        return [a / b for a, b in zip(self.series(i), self.series(j))]

    def ratio(self, i: int, j: int) -> float:
        return median_ratio(self.series(i), self.series(j))

    def median_ms(self, i: int) -> float:
        return statistics.median(self.series(i))


def median_ratio(a_ms: Sequence[float], b_ms: Sequence[float]) -> float:
    """The median over paired cycles of a's burst time over b's (< 1: a was faster)."""
    return statistics.median(a / b for a, b in zip(a_ms, b_ms))


def runner_call(model: str, backend: str | None, threads: int | None, batch: int = 1,
                options: tuple = ()) -> Callable[[], object]:
    """One run of ``model`` on its engine (opened now, kept open for the life of the process)."""
    from shipyard.compare import model_feeds
    from shipyard.runtimes import open_runner

    runner = open_runner(model, backend=backend, threads=threads, **dict(options)).__enter__()
    feeds = model_feeds(runner.signature, None, 0, batch, None, None)
    return lambda: runner.run(feeds)


def _worker(make: Callable[..., Callable[[], object]], args: tuple, warmup: int, conn) -> None:
    """Body of a contender's process: build the call, warm it up, then time bursts on request."""
    from shipyard import progress

    progress.off()
    try:
        fn = make(*args)
        for _ in range(warmup):
            fn()
    except ShipyardError as exc:
        conn.send(json.dumps({"error": exc.message}))
        return
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(json.dumps({"error": f"internal error: {exc.__class__.__name__}: {exc}"}))
        return
    conn.send(json.dumps({"ready": True}))
    while (n := conn.recv()) is not None:
        fn()  # untimed: the first call after waiting idle pays for cold caches
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        conn.send(json.dumps({"ms": statistics.median(times)}))


class _Contender:
    def __init__(self, label: str, make, args: tuple, warmup: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # forking a process that runs engine thread pools can deadlock
        self.label = label
        self.conn, child = ctx.Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.proc = ctx.Process(target=_worker, args=(make, args, warmup, child), daemon=True)
        self.proc.start()
        child.close()

    def answer(self) -> dict:
        try:
            reply = json.loads(self.conn.recv())
        except EOFError:
            self.proc.join()
            raise NativeCrashError(f"{self.label}: the engine crashed (exit {self.proc.exitcode}) while measuring") from None
        if "error" in reply:
            raise ShipyardError(f"{self.label}: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def interleave(contenders: Sequence[tuple[str, Callable, tuple]], cycles: int = CYCLES, burst: int = BURST,
               warmup: int = WARMUP, progress: Callable[[str], None] | None = None) -> Paired:
    """Measure ``(label, make, args)`` contenders in paired, interleaved bursts: ``make(*args)``
    runs in the contender's own spawned process and returns the call to time. Cycle c runs every
    contender once, in the given order when c is even and reversed when odd."""
    workers: list[_Contender] = []
    try:
        for label, make, args in contenders:  # all load at once; each then waits for its turn
            workers.append(_Contender(label, make, args, warmup))
        for w in workers:
            w.answer()
        rows = []
        for c in range(cycles):
            if progress:
                progress(f"paired bursts: cycle {c + 1}/{cycles} of {len(workers)} contenders")
            order = range(len(workers)) if c % 2 == 0 else range(len(workers) - 1, -1, -1)
            row = [0.0] * len(workers)
            for i in order:
                workers[i].conn.send(burst)
                row[i] = workers[i].answer()["ms"]
            rows.append(row)
        return Paired([w.label for w in workers], rows, burst)
    finally:
        for w in workers:
            w.close()
