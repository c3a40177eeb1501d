"""Dynamic batching with a bounded queue, run on worker threads (never on the event loop).

Requests whose inputs agree on every dimension but the first are concatenated along it, up
to ``max_batch_size`` rows; a partial batch waits at most ``max_queue_delay_ms`` for more and
leaves at once when it reaches a preferred size. A full queue refuses new work
(:class:`QueueFullError` -> 429 / RESOURCE_EXHAUSTED) instead of growing without bound.
Written here because the engines batch nothing themselves and the Python batchers that exist
(BentoML's, Ray's) come inside whole serving frameworks.

A request that would make a batch of one anyway (nothing queued, an engine slot free, no queue
delay to wait for, and, when batching is on, no other request in flight that could join it, as
the caller says through ``ALONE``) to a model whose calls take under ``INLINE_BELOW_S`` runs at once on the
caller's thread: the hand-off to a worker and back (two thread wake-ups, GIL hand-overs and an
event-loop wake-up) cost a tiny model more than its engine call. The same slots bound engine
calls in flight to ``workers`` either way, and the same metrics and statistics are recorded.
"""
from __future__ import annotations

import collections
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from shipyard.serve.errors import QueueFullError, UnavailableError
from shipyard.serve.repository import BatchingConfig
from shipyard.serve.stats import InferenceStats

_STOP = object()
INLINE_BELOW_S = 250e-6  # engine calls shorter than this may run on the caller's thread (the event loop)
# Set by a front end that knows its other requests in flight: False when one of them could share
# this request's batch (and the worker would then merge them), True when it is alone.
ALONE: contextvars.ContextVar[bool] = contextvars.ContextVar("shipyard_serve_alone", default=True)


class _Item:
    __slots__ = ("enqueued", "feeds", "future", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], batchable: bool):
        self.feeds = feeds
        self.future: Future = Future()
        self.enqueued = time.perf_counter()
        rows = 0  # the batch dimension every input shares; 0: this request cannot be merged
        if batchable:
            for v in feeds.values():
                if not v.ndim or not v.shape[0] or (rows and v.shape[0] != rows):
                    rows = 0
                    break
                rows = v.shape[0]
        self.rows = rows

    def key(self) -> tuple:
        """Requests can share an engine call only if everything but the batch dimension agrees
        (computed by the worker that merges, not for a request that runs alone)."""
        return tuple((k, v.dtype.str, v.shape[1:]) for k, v in self.feeds.items())


class Batcher:
    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], config: BatchingConfig,
                 workers: int = 1, batchable: bool = True, name: str = "",
                 on_batch: Callable[[int, list[float]], None] | None = None, stats: InferenceStats | None = None):
        self._run = run
        self._stats = stats
        self.config = config
        self._batchable = batchable and config.max_batch_size > 1
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_queue_size)
        self._on_batch = on_batch
        self._closed = False
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(workers)  # engine calls in flight: workers' and callers' alike
        self._workers = workers
        # A queue delay is a request to wait for company: then every request goes through the queue.
        self._may_inline = not (self._batchable and config.max_queue_delay_ms > 0)
        self._call_s: float | None = None  # the shortest of the last engine calls, None until measured
        self._recent: collections.deque[float] = collections.deque(maxlen=8)
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        item = _Item(feeds, self._batchable)
        with self._lock:
            if self._closed:
                raise UnavailableError("this model version is being unloaded")
            cost = self._call_s
            # Other requests in flight matter only when they could share this one's engine call.
            inline = (self._may_inline and cost is not None and cost < INLINE_BELOW_S and self._queue.empty()
                      and (not self._batchable or ALONE.get()) and self._slots.acquire(blocking=False))
            if not inline:
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    raise QueueFullError(
                        f"the request queue is full ({self.config.max_queue_size} waiting)",
                        hint="retry after a short back-off") from None
        if inline:  # a batch of one, now, here: the answer (or error) is in the future when it returns
            try:
                self._timed_execute([item])
            finally:
                self._slots.release()
        return item.future

    def close(self) -> None:
        """Refuse new work, finish everything queued, stop the workers (drain)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join()
        for _ in range(self._workers):  # calls running on callers' threads finish too
            self._slots.acquire()

    # -- worker side ----------------------------------------------------------------------

    def _work(self) -> None:
        carry = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is _STOP:
                return
            batch = [item]
            if item.rows:
                carry = self._fill(batch)
            with self._slots:
                self._timed_execute(batch)

    def _timed_execute(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        self._execute(batch)
        took = time.perf_counter() - start
        # The shortest recent call is the model's cost: on a busy machine a preempted call takes many
        # times as long (never less), and a slow model has no short calls.
        with self._lock:  # workers and callers time calls concurrently
            self._recent.append(took)
            self._call_s = min(self._recent)

    def _fill(self, batch: list[_Item]):
        """Add compatible queued requests to ``batch``; returns an item that did not fit."""
        cfg = self.config
        rows, key = batch[0].rows, batch[0].key()
        deadline = batch[0].enqueued + cfg.max_queue_delay_ms / 1e3
        while rows < cfg.max_batch_size and rows not in cfg.preferred_batch_sizes:
            timeout = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if nxt is _STOP or not nxt.rows or rows + nxt.rows > cfg.max_batch_size or nxt.key() != key:
                return nxt
            batch.append(nxt)
            rows += nxt.rows
        return None

    def _execute(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self._on_batch is not None:
            self._on_batch(len(live), [start - it.enqueued for it in live])
        merged = ran = start
        calls, results, error = 1, None, None
        try:
            if len(live) == 1:
                results = [self._run(live[0].feeds)]
                ran = time.perf_counter()
            else:
                names = list(live[0].feeds)
                joined = {n: np.concatenate([it.feeds[n] for it in live]) for n in names}
                merged = time.perf_counter()
                outputs = self._run(joined)
                ran = time.perf_counter()
                total = sum(it.rows for it in live)
                if all(v.ndim and v.shape[0] == total for v in outputs.values()):
                    results, offset = [], 0
                    for it in live:
                        results.append({k: v[offset:offset + it.rows] for k, v in outputs.items()})
                        offset += it.rows
                else:  # outputs not batched along axis 0: run the requests one by one
                    calls += len(live)
                    results = [self._run(it.feeds) for it in live]
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request; the worker lives on
            error = exc
        if self._stats is not None:  # counted before anyone is answered: a client that reads them next sees its request
            self._stats.executed(live, start, merged, ran, time.perf_counter(), error is None, calls)
        if error is not None:
            for it in live:
                it.future.set_exception(error)
        else:
            for it, result in zip(live, results):
                it.future.set_result(result)
