"""Per-version inference statistics, counted as Triton's statistics extension defines them.

One :class:`InferenceStats` per loaded version, written by its batcher once per engine call
(one lock, a dozen additions: about 3x a bare locked increment) and read by ``GET v2/models[/M[/versions/V]]/stats``
and gRPC ``ModelStatistics``. Durations are kept in seconds of ``time.perf_counter`` and
answered in nanoseconds:

- ``success`` / ``fail``: per request, from entering the model's queue to its answer (or error);
- ``queue``: per request, the time it waited for an engine call;
- ``compute_input``: per request, assembling the batch (merging requests, or nothing for one);
- ``compute_infer``: per request, the engine call its rows were part of;
- ``compute_output``: per request, splitting the answer back per request;
- ``inference_count``: rows answered (1 per request for a model without a batch dimension);
  ``execution_count``: engine calls; ``batch_stats``: engine calls by batch size.

A request the model refuses before queueing it (a wrong dtype, a missing input, a full queue)
counts as ``fail`` with the time spent refusing it; one that cannot even be decoded (malformed,
or a shape that contradicts the signature, refused before any tensor is allocated) never
reaches the model, as in Triton, and shows only in the Prometheus metrics. Statistics live
and die with the loaded version, as in Triton.
"""
from __future__ import annotations

import threading
import time
from typing import Any


class InferenceStats:
    __slots__ = ("_batches", "_lock", "executions", "fail_n", "fail_s", "infer_s", "inferences", "input_s", "last",
                 "ok_n", "ok_s", "output_s", "queue_n", "queue_s", "refused_n")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Seconds as floats, counts as ints: turned into Triton's nanoseconds when read. The compute_*
        # counts equal ok_n (every answered request went through each stage), so they are not kept.
        self.ok_n = self.fail_n = self.queue_n = self.refused_n = self.inferences = self.executions = 0
        self.ok_s = self.fail_s = self.queue_s = self.input_s = self.infer_s = self.output_s = 0.0
        self._batches: dict[int, list] = {}  # batch size -> [engine calls, input s, infer s, output s]
        self.last = 0.0  # perf_counter time of the last answer

    def refused(self, ns: int) -> None:
        """A request that failed before it reached the queue."""
        with self._lock:
            self.refused_n += 1
            self.fail_s += ns / 1e9

    def executed_one(self, enqueued: float, rows: int, start: float, end: float, ok: bool) -> None:
        """:meth:`executed` for a request run alone at once (nothing to merge or split: its
        compute_input and compute_output are 0), without an item list."""
        self._record(1, enqueued, rows or 1, start, start, end, end, ok, 1)

    def executed(self, items, start: float, merged: float, ran: float, end: float, ok: bool, calls: int = 1) -> None:
        """Engine call(s) answering ``items`` (each with ``enqueued``, a perf_counter time, and
        ``rows``, 0 for a model without a batch dimension); ``start``/``merged``/``ran``/``end``
        are perf_counter stamps around assembling the batch, the engine, and splitting the answers."""
        if len(items) == 1:  # the common case, without building lists
            n, queued, size = 1, items[0].enqueued, items[0].rows or 1
        else:
            n, queued, size = len(items), sum(it.enqueued for it in items), sum(it.rows or 1 for it in items)
        self._record(n, queued, size, start, merged, ran, end, ok, calls)

    def _record(self, n: int, queued: float, size: int, start: float, merged: float, ran: float, end: float,
                ok: bool, calls: int) -> None:
        """``n`` requests (``queued``: the sum of their enqueue stamps; ``size``: their rows) answered."""
        with self._lock:
            self.queue_n += n
            self.queue_s += n * start - queued
            if not ok:
                self.fail_n += n
                self.fail_s += n * end - queued
                return
            self.ok_n += n
            self.ok_s += n * end - queued
            self.input_s += n * (merged - start)
            self.infer_s += n * (ran - merged)
            self.output_s += n * (end - ran)
            b = self._batches.get(size)
            if b is None:
                b = self._batches[size] = [0, 0.0, 0.0, 0.0]
            b[0] += calls
            b[1] += merged - start
            b[2] += ran - merged
            b[3] += end - ran
            self.inferences += size
            self.executions += calls
            self.last = end

    def triton(self, name: str, version: int) -> dict[str, Any]:
        """This version's ``$model_stat`` object (Triton's JSON; the gRPC message has the same fields)."""
        def d(count: int, seconds: float) -> dict[str, int]:
            return {"count": count, "ns": round(seconds * 1e9)}

        with self._lock:
            ok = self.ok_n
            totals = {"success": d(ok, self.ok_s), "fail": d(self.fail_n + self.refused_n, self.fail_s),
                      "queue": d(self.queue_n, self.queue_s), "compute_input": d(ok, self.input_s),
                      "compute_infer": d(ok, self.infer_s), "compute_output": d(ok, self.output_s),
                      "cache_hit": d(0, 0.0), "cache_miss": d(0, 0.0)}
            batches = [{"batch_size": size, "compute_input": d(c, i), "compute_infer": d(c, r), "compute_output": d(c, o)}
                       for size, (c, i, r, o) in sorted(self._batches.items())]
            last = round((time.time() - (time.perf_counter() - self.last)) * 1000) if self.last else 0
            return {"name": name, "version": str(version), "last_inference": last,
                    "inference_count": self.inferences, "execution_count": self.executions,
                    "inference_stats": totals, "batch_stats": batches}
