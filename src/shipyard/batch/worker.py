"""The work done for one shard, the same in a local worker process and in a Ray actor: read the
shard through the data layer, run the model in batches, write the shard's output atomically.

One :class:`ShardWorker` holds one runner, opened once when the worker starts (not per shard,
not per batch). Errors do not escape: a bad shard comes back as a result with an ``error``, so
one damaged file is reported while the other shards complete.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.batch import output
from shipyard.errors import ShipyardError


def open_shard(shard: dict[str, Any], mapping: dict[str, str], image_options: dict[str, Any]):
    """The data layer's source for one shard (the readers `run`, `quantize` and `compare` use)."""
    path = Path(shard["path"])
    kind = shard["kind"]
    if kind == "tfrecord":
        from shipyard.data.tfrecord import RecordSource

        return RecordSource(path, mapping)
    if kind == "parquet":
        from shipyard.data.parquet import ParquetSource

        return ParquetSource(path, mapping)
    if kind == "images":
        from shipyard.data.images import ImageFolderSource

        return ImageFolderSource(path, **image_options)
    from shipyard.data.arrays import ArraySource

    return ArraySource(path)


def batches(feeds: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(examples in it, feeds) per batch of ``size`` samples, concatenated on the batch axis."""
    chunk: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        chunk.append(feed)
        if len(chunk) == size:
            yield len(chunk), {k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]}
            chunk = []
    if chunk:
        yield len(chunk), {k: np.concatenate([c[k] for c in chunk]) for k in chunk[0]}


class ShardWorker:
    """One runner per worker (process or actor); ``process`` one shard at a time."""

    def __init__(self, spec: dict[str, Any]):
        from shipyard.runtimes import open_runner

        self.spec = spec
        start = time.perf_counter()
        self.runner = open_runner(spec["model"], backend=spec.get("backend"), threads=spec.get("threads"))
        if spec.get("format") == "parquet":
            try:  # once per worker, with the model: not in the first shard's time
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                pass  # reported by output.write with the extra to install
        self.load_seconds = time.perf_counter() - start
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        fixed = any(s.shape and isinstance(s.shape[0], int) and s.shape[0] >= 0 for s in self.runner.signature.inputs)
        self.batch_size = 1 if fixed else max(1, int(spec["batch_size"]))  # a fixed batch axis takes one example
        self.node = spec.get("node")

    def process(self, task: dict[str, Any]) -> dict[str, Any]:
        shard = task["shard"]
        result: dict[str, Any] = {"path": shard["path"], "output": task["output"], "worker": self.where,
                                  "node": self.node, "load_seconds": self.load_seconds}
        start = time.perf_counter()
        try:
            result.update(self._process(shard, Path(self.spec["out"]) / task["output"]))
        except ShipyardError as exc:
            result["error"] = exc.message
        except Exception as exc:  # noqa: BLE001 - a bug or an engine's own exception type: report the shard, keep going
            result["error"] = f"{exc.__class__.__name__}: {exc}"
        result["seconds"] = time.perf_counter() - start
        return result

    def _process(self, shard: dict[str, Any], out: Path) -> dict[str, Any]:
        from shipyard.ship.manifest import sha256

        input_sha = sha256(Path(shard["path"]))  # before reading: what was hashed is what was read
        source = open_shard(shard, self.spec.get("mapping") or {}, self.spec.get("image_options") or {})
        collected: dict[str, list[np.ndarray]] = {}
        count = n_batches = 0
        run_seconds = 0.0
        signature = self.runner.signature
        chunks = (source.batches(signature, self.batch_size) if hasattr(source, "batches")  # arrays: sliced
                  else batches(source.feeds(signature), self.batch_size))  # images: decoded one by one
        for size, feeds in chunks:
            t = time.perf_counter()
            outputs = self.runner.run(feeds)
            run_seconds += time.perf_counter() - t
            for name, value in outputs.items():
                collected.setdefault(name, []).append(value)
            count += size
            n_batches += 1
        if not count:
            raise ShipyardError(f"{shard['path']}: no examples in the shard")
        arrays = {name: np.concatenate(parts) for name, parts in collected.items()}
        output.check_batch_axis(arrays, count, shard["path"])
        output.write(out, arrays, count, self.spec["format"])
        return {"examples": count, "batches": n_batches, "run_seconds": run_seconds, "input_sha256": input_sha,
                "sha256": output.file_sha256(out), "size": out.stat().st_size}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


# -- a local worker process holds one ShardWorker in a global ------------------------------

_WORKER: ShardWorker | None = None


def init_process(spec: dict[str, Any]) -> None:
    """ProcessPoolExecutor initializer: open the runner once for this process."""
    from shipyard import guard

    guard.die_with(os.getppid())  # a killed CLI takes its workers with it
    global _WORKER
    _WORKER = ShardWorker(spec)


def process_in_pool(task: dict[str, Any]) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER.process(task)
