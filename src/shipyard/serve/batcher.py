"""Dynamic batching with a bounded queue, run on worker threads (never on the event loop).

Requests whose inputs agree on every dimension but the first are concatenated along it, up
to ``max_batch_size`` rows; a partial batch waits at most ``max_queue_delay_ms`` for more and
leaves at once when it reaches a preferred size. A full queue refuses new work
(:class:`QueueFullError` -> 429 / RESOURCE_EXHAUSTED) instead of growing without bound.
Written here because the engines batch nothing themselves and the Python batchers that exist
(BentoML's, Ray's) come inside whole serving frameworks.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from shipyard.serve.errors import QueueFullError, UnavailableError
from shipyard.serve.repository import BatchingConfig

_STOP = object()


class _Item:
    __slots__ = ("enqueued", "feeds", "future", "key", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], batchable: bool):
        self.feeds = feeds
        self.future: Future = Future()
        self.enqueued = time.perf_counter()
        first = next(iter(feeds.values()), None)
        rows = first.shape[0] if first is not None and first.ndim else 0
        same_rows = batchable and rows > 0 and all(v.ndim and v.shape[0] == rows for v in feeds.values())
        self.rows = rows if same_rows else 0
        # Requests can share an engine call only if everything but the batch dimension agrees.
        self.key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items()) if same_rows else None


class Batcher:
    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], config: BatchingConfig,
                 workers: int = 1, batchable: bool = True, name: str = "",
                 on_batch: Callable[[int, list[float]], None] | None = None):
        self._run = run
        self.config = config
        self._batchable = batchable and config.max_batch_size > 1
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_queue_size)
        self._on_batch = on_batch
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        item = _Item(feeds, self._batchable)
        with self._lock:
            if self._closed:
                raise UnavailableError("this model version is being unloaded")
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                raise QueueFullError(
                    f"the request queue is full ({self.config.max_queue_size} waiting)",
                    hint="retry after a short back-off") from None
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

    # -- worker side ----------------------------------------------------------------------

    def _work(self) -> None:
        carry = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is _STOP:
                return
            batch = [item]
            if item.key is not None:
                carry = self._fill(batch)
            self._execute(batch)

    def _fill(self, batch: list[_Item]):
        """Add compatible queued requests to ``batch``; returns an item that did not fit."""
        cfg = self.config
        rows = batch[0].rows
        deadline = batch[0].enqueued + cfg.max_queue_delay_ms / 1e3
        while rows < cfg.max_batch_size and rows not in cfg.preferred_batch_sizes:
            timeout = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if nxt is _STOP or nxt.key != batch[0].key or rows + nxt.rows > cfg.max_batch_size:
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
        try:
            if len(live) == 1:
                live[0].future.set_result(self._run(live[0].feeds))
                return
            names = list(live[0].feeds)
            joined = {n: np.concatenate([it.feeds[n] for it in live]) for n in names}
            outputs = self._run(joined)
            total = sum(it.rows for it in live)
            if not all(v.ndim and v.shape[0] == total for v in outputs.values()):
                for it in live:  # outputs not batched along axis 0: run the requests one by one
                    it.future.set_result(self._run(it.feeds))
                return
            offset = 0
            for it in live:
                it.future.set_result({k: v[offset:offset + it.rows] for k, v in outputs.items()})
                offset += it.rows
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request; the worker lives on
            for it in live:
                if not it.future.done():
                    it.future.set_exception(exc)
