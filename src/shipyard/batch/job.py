"""A batch job from start to summary: expand the inputs, check them against the model and the
output directory (all before any work), run the shards that are not done yet locally or on Ray,
record each in the manifest as it finishes, and summarise."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.batch import manifest as manifest_mod
from shipyard.batch import output, shards
from shipyard.errors import InputError, MissingDependencyError, UsageError


@dataclass
class BatchOptions:
    model: Path
    inputs: list[str]
    out: Path
    mapping: dict[str, str] = field(default_factory=dict)
    batch_size: int = 64
    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    format: str = "parquet"
    backend: str | None = None
    threads: int | None = None
    image_options: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None  # None: when stderr is a terminal


def output_names(items: list[shards.Shard], fmt: str) -> dict[str, str]:
    """Input path -> output file name (the input's name with the format's suffix)."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for shard in items:
        name = Path(shard.path).name
        for suffix in (".gz", ".tfrecord", ".tfrecords", ".tfrec", ".parquet", ".npy", ".npz"):
            name = name.removesuffix(suffix) if name != suffix else name
        name += output.FORMATS[fmt]
        if name == manifest_mod.NAME or name in taken:
            raise UsageError(f"inputs {taken.get(name, name)} and {shard.path} would both write {name}",
                             hint="outputs are named after the input files; give inputs with distinct names")
        taken[name] = shard.path
        names[shard.path] = name
    return names


def run_batch(opts: BatchOptions) -> dict[str, Any]:
    """Run (or resume) the job; the summary as plain data."""
    from shipyard.atomic import check_output_path
    from shipyard.batch.worker import ShardWorker
    from shipyard.ship.manifest import sha256

    if opts.batch_size < 1 or opts.workers < 1:
        raise UsageError("--batch-size and --workers must be at least 1")
    if opts.format not in output.FORMATS:
        raise UsageError(f"--format {opts.format}: expected one of {', '.join(output.FORMATS)}")
    if opts.format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise MissingDependencyError("pyarrow", "ray", "Parquet output") from None
    if opts.ray:  # Ray installed, the cluster answering: checked before anything is read or written
        from shipyard import ray_connect

        ray_connect.preflight(opts.ray_address)
    items = shards.expand(opts.inputs)
    names = output_names(items, opts.format)
    out = check_output_path(opts.out, opts.model, *(s.path for s in items), parents=True)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: is a file; batch writes a directory")
    threads = opts.threads or max(1, (os.cpu_count() or 1) // opts.workers)
    spec = {"model": str(Path(opts.model).absolute()), "backend": opts.backend, "threads": threads,
            "batch_size": opts.batch_size, "mapping": opts.mapping, "image_options": opts.image_options,
            "out": str(out), "format": opts.format}
    driver = ShardWorker(spec)  # loads the model once here: a model that cannot run fails before any work
    try:
        shards.check_schemas(items, driver.runner.signature, opts.mapping)
        model_info = {"path": spec["model"], "sha256": sha256(Path(opts.model)), "format": driver.runner.model.format,
                      "backend": driver.runner.backend}
        options = {"map": opts.mapping, "format": opts.format, "backend": driver.runner.backend,
                   "image": opts.image_options if items[0].kind == "images" else {}}
        job = manifest_mod.job_id(model_info["sha256"], options, [s.path for s in items])
        manifest = manifest_mod.Manifest.open(out, job, model_info, options, [s.to_dict() for s in items])
        todo = [s for s in items if not manifest.is_done(s.to_dict())]
        skipped = len(items) - len(todo)
        tasks = [{"shard": s.to_dict(), "output": names[s.path]} for s in todo]
        by_path = {s.path: s.to_dict() for s in todo}
        mode = "ray" if opts.ray else "local"
        start = time.perf_counter()
        progress = _Progress(len(items), skipped, opts.progress)
        done_examples = failed = 0
        results: list[dict[str, Any]] = []
        if tasks:
            for result in _execute(opts, spec, tasks, driver):
                shard = by_path[result["path"]]
                if result.get("error"):
                    manifest.fail(shard, result["error"])
                    failed += 1
                else:
                    manifest.record(shard, result)
                    done_examples += result["examples"]
                manifest.save()
                results.append(result)
                progress.update(len(results), done_examples, failed)
        wall = time.perf_counter() - start
        progress.close()
        run = {"mode": mode, "workers": opts.workers, "batch_size": opts.batch_size, "threads": threads,
               "address": opts.ray_address, "started": round(time.time() - wall, 3), "seconds": round(wall, 3),
               "shards": len(tasks), "skipped": skipped, "failed": failed, "examples": done_examples,
               "examples_per_s": round(done_examples / wall, 1) if wall > 0 and done_examples else None}
        manifest.finish_run(run)
        manifest.save()
    finally:
        driver.close()
    return {"out": str(out), "job": job, "manifest": str(out / manifest_mod.NAME), "run": run,
            "counts": manifest.data["counts"], "complete": manifest.data["complete"],
            "shards": [_row(s, names[s.path], manifest, results) for s in items],
            "failed": dict(manifest.data["failed"])}


def _execute(opts: BatchOptions, spec: dict[str, Any], tasks: list[dict[str, Any]], driver) -> Iterator[dict[str, Any]]:
    if opts.ray:
        driver.close()  # the actors hold their own runners
        from shipyard.batch import ray_runner

        yield from ray_runner.run(spec, tasks, opts.workers, opts.ray_address)
        return
    if opts.workers == 1:  # this process is the one worker: its runner is already loaded
        for task in tasks:
            yield driver.process(task)
        return
    driver.close()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from shipyard.batch.worker import init_process, process_in_pool

    ctx = multiprocessing.get_context("spawn")  # no engine threads inherited through fork
    with ProcessPoolExecutor(max_workers=min(opts.workers, len(tasks)), mp_context=ctx,
                             initializer=init_process, initargs=(spec,)) as pool:
        futures = [pool.submit(process_in_pool, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            raise InputError("a local worker process died (killed, or the engine crashed); "
                             "the shards finished so far are recorded: run the same command again to resume") from None


def _row(shard: shards.Shard, name: str, manifest, results: list[dict[str, Any]]) -> dict[str, Any]:
    entry = manifest.data["shards"].get(shard.path)
    ran = next((r for r in results if r["path"] == shard.path), None)
    if shard.path in manifest.data["failed"]:
        status = "failed"
    elif ran is not None:
        status = "done"
    else:
        status = "skipped" if entry else "pending"
    return {"input": shard.path, "output": name, "status": status,
            "examples": entry["examples"] if entry else None,
            "seconds": round(ran["seconds"], 3) if ran else None,
            "worker": (ran or entry or {}).get("worker"),
            "error": manifest.data["failed"].get(shard.path)}


class _Progress:
    """Shards done of all, with examples/s and the time left, on the terminal's progress line
    (:mod:`shipyard.progress`: off when not a terminal, with SHIPYARD_PROGRESS=0 or --quiet)."""

    def __init__(self, total: int, skipped: int, enabled: bool | None):
        from shipyard import progress

        self.total, self.skipped = total, skipped
        self.enabled = progress.enabled() if enabled is None else enabled
        self.start = time.perf_counter()
        if self.enabled:
            progress.count("batch", skipped, total, unit="shard")

    def update(self, finished: int, examples: int, failed: int) -> None:
        if not self.enabled:
            return
        from shipyard import progress

        rate = examples / max(time.perf_counter() - self.start, 1e-9)
        detail = (f"{self.skipped} skipped, " if self.skipped else "") + (f"{failed} failed, " if failed else "") \
            + f"{examples:,} examples, {rate:,.0f} examples/s"
        progress.count("batch", self.skipped + finished, self.total, unit="shard", detail=detail)

    def close(self) -> None:
        from shipyard import progress

        progress.done()


def render(summary: dict[str, Any]) -> str:
    """The summary table: one row per shard, then the totals of this run."""
    rows = [("input", "output", "status", "examples", "seconds", "worker")]
    for r in summary["shards"]:
        rows.append((Path(r["input"]).name, r["output"], r["status"],
                     "" if r["examples"] is None else f"{r['examples']:,}",
                     "" if r["seconds"] is None else f"{r['seconds']:.3f}", r["worker"] or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 or i == 5 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    run, counts = summary["run"], summary["counts"]
    rate = f", {run['examples_per_s']:,.1f} examples/s" if run["examples_per_s"] else ""
    where = f"ray ({run['address'] or 'local'}), {run['workers']} actor(s)" if run["mode"] == "ray" \
        else f"local, {run['workers']} worker process(es)"
    lines.append(f"this run: {run['shards']} shard(s), {run['examples']:,} examples in {run['seconds']:.2f} s{rate}; "
                 f"{run['skipped']} skipped (already done); {where}")
    lines.append(f"job {summary['job']}: {counts['done']}/{counts['inputs']} shards, {counts['examples']:,} examples"
                 + (", complete" if summary["complete"] else ", NOT complete") + f"; manifest {summary['manifest']}")
    for path, error in summary["failed"].items():
        lines.append(f"failed: {Path(path).name}: {error}")
    return "\n".join(lines)
