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
Such a call skips the queue's bookkeeping as well: its slot is a counter under the batcher's
lock (no ``Semaphore``), and its answer a ``Future`` made already finished (no ``Condition``
per request); ~4 us of a tiny model's ~50 us request in-process.
"""
from __future__ import annotations

import collections
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import FINISHED

import numpy as np

from shipyard.serve.errors import QueueFullError, UnavailableError
from shipyard.serve.repository import BatchingConfig
from shipyard.serve.stats import InferenceStats

_STOP = object()
INLINE_BELOW_S = 250e-6  # engine calls shorter than this may run on the caller's thread (the event loop)
# Set by a front end that knows its other requests in flight: False when one of them could share
# this request's batch (and the worker would then merge them), True when it is alone.
ALONE: contextvars.ContextVar[bool] = contextvars.ContextVar("shipyard_serve_alone", default=True)


_DONE_CONDITION = threading.Condition()  # shared by finished futures: nobody ever waits on it


class _Done(Future):
    """A Future made finished: what a request run at once answers. ``Future()`` builds a
    Condition and setting its result takes it and notifies (4.3 us measured here, 1.2 for this);
    every Future method still works (result, exception, done, callbacks, asyncio.wrap_future,
    concurrent.futures.wait), since a finished Future only ever takes its condition briefly."""

    def __init__(self, result=None, exception: BaseException | None = None) -> None:
        self._condition = _DONE_CONDITION
        self._state = FINISHED
        self._result = result
        self._exception = exception
        self._waiters = []
        self._done_callbacks = []

    def done(self) -> bool:  # finished from the start: without taking the condition
        return True

    def result(self, timeout: float | None = None):
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # noqa: PLW0642 - as Future.__get_result: no cycle through the traceback's frame
        return self._result


def _rows(feeds: dict[str, np.ndarray], batchable: bool) -> int:
    """The batch dimension every input shares; 0: this request cannot be merged."""
    rows = 0
    if batchable:
        for v in feeds.values():
            if not v.ndim or not v.shape[0] or (rows and v.shape[0] != rows):
                return 0
            rows = v.shape[0]
    return rows


class _Item:
    __slots__ = ("enqueued", "feeds", "future", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], rows: int, enqueued: float):
        self.feeds = feeds
        self.future: Future = Future()
        self.enqueued = enqueued
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
        # Engine calls in flight, workers' and callers' alike, at most ``workers``: a counter under
        # _lock (a caller's call takes and frees its slot with the lock it holds anyway).
        self._busy = 0
        self._slot_free = threading.Condition(self._lock)
        self._slot_waiters = 0
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
        enqueued = time.perf_counter()
        with self._lock:
            if self._closed:
                raise UnavailableError("this model version is being unloaded")
            cost = self._call_s
            # Other requests in flight matter only when they could share this one's engine call.
            if (self._may_inline and cost is not None and cost < INLINE_BELOW_S and self._busy < self._workers
                    and self._queue.empty() and (not self._batchable or ALONE.get())):
                self._busy += 1  # a batch of one, now, here (below)
            else:
                item = _Item(feeds, _rows(feeds, self._batchable), enqueued)
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    raise QueueFullError(
                        f"the request queue is full ({self.config.max_queue_size} waiting)",
                        hint="retry after a short back-off") from None
                return item.future
        return self._inline(feeds, enqueued)

    def _inline(self, feeds: dict[str, np.ndarray], enqueued: float) -> Future:
        """Run a batch of one on this thread, holding a slot taken by :meth:`submit`; what
        :meth:`_execute` records for it, answered as a finished Future."""
        start = time.perf_counter()
        result = error = None
        try:
            if self._on_batch is not None:
                self._on_batch(1, [start - enqueued])
            try:
                result = self._run(feeds)
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller, as to a queued request
                error = exc
            end = time.perf_counter()
            if self._stats is not None:
                self._stats.executed_one(enqueued, _rows(feeds, self._batchable), start, end, error is None)
        finally:
            with self._lock:
                self._took(time.perf_counter() - start)
                self._free_slot()
        return _Done(result, error)

    def _take_slot(self) -> None:
        with self._lock:
            while self._busy >= self._workers:
                self._wait_for_a_slot()
            self._busy += 1

    def _wait_for_a_slot(self) -> None:
        """Under _lock: sleep until a slot is freed (counted, so that freeing one notifies only
        when somebody waits)."""
        self._slot_waiters += 1
        try:
            self._slot_free.wait()
        finally:
            self._slot_waiters -= 1

    def _free_slot(self) -> None:
        """Under _lock."""
        self._busy -= 1
        if self._slot_waiters:
            self._slot_free.notify_all()  # workers wait for a slot; close() waits for all of them

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
        with self._lock:  # calls running on callers' threads finish too
            while self._busy:
                self._wait_for_a_slot()

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
            self._take_slot()
            start = time.perf_counter()
            try:
                self._execute(batch)
            finally:
                with self._lock:
                    self._took(time.perf_counter() - start)
                    self._free_slot()

    def _took(self, seconds: float) -> None:
        """Under _lock (workers and callers time calls concurrently). The shortest recent call is
        the model's cost: on a busy machine a preempted call takes many times as long (never
        less), and a slow model has no short calls."""
        self._recent.append(seconds)
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
