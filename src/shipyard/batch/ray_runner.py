"""The batch job on Ray Data: one dataset row per shard, ``map_batches`` with an actor class
(:class:`ShardActor`: one runner per actor, loaded once) on a pool of N actors.

Rows are shards rather than examples so that each shard's output is written whole and
atomically by the one actor that computed it: a Ray task retried after its actor died
recomputes the shard and replaces the file with identical bytes, and the driver records a shard
in the manifest only once its result has come back, so every example is in the output once.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from shipyard import ray_connect


class ShardActor:
    """A Ray Data callable class: one ShardWorker (runner) per actor, one shard per row."""

    SPEC: ClassVar[dict[str, Any]] = {}  # set on a subclass per job: constructor arguments would sit in the object store

    def __init__(self):
        import ray

        from shipyard.batch.worker import ShardWorker

        spec = dict(self.SPEC, node=ray.get_runtime_context().get_node_id())
        self.worker = ShardWorker(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = [json.dumps(self.worker.process(json.loads(task))) for task in batch["task"]]
        return {"result": results}


def run(spec: dict[str, Any], tasks: list[dict[str, Any]], workers: int, address: str | None) -> Iterator[dict[str, Any]]:
    """Results of ``tasks`` as they finish (in any order)."""
    # Ray's driver prints its raylets' notices ("a worker died...") on stdout: keep stdout for the result
    with contextlib.redirect_stdout(sys.stderr):
        yield from _run(spec, tasks, workers, address)


def _run(spec: dict[str, Any], tasks: list[dict[str, Any]], workers: int, address: str | None) -> Iterator[dict[str, Any]]:
    ray = ray_connect.init(address, workers)
    try:
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # after the import: it configures its own logging
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        start = time.perf_counter()
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        actor = type("ShardActor", (ShardActor,), {"SPEC": spec})
        # Ray Data's actors default to max_restarts=-1, max_task_retries=-1: a killed actor is
        # replaced and its shard redone (the output file is replaced with the same bytes)
        ds = ds.map_batches(actor, batch_size=1, batch_format="numpy", num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=min(workers, len(tasks))))
        for row in ds.iter_rows():
            result = json.loads(row["result"])
            result.setdefault("elapsed", time.perf_counter() - start)
            yield result
    finally:
        ray.shutdown()
