"""`shipyard batch` throughput against its peer, a plain Python loop over the runner, for a tiny
MLP and MobileNetV2 (ONNX, onnxruntime): local with 1 and 2 worker processes, and on Ray with 1
and 2 actors (a two-node Ray cluster on this machine, one CPU per node, started once for the run,
so cluster start-up is not counted; joining it and starting the actors is). Also what Ray adds:
per job and per shard for `batch --ray` (from the manifests' timestamps), and per batch when
examples themselves stream through Ray Data (`map_batches` over example rows, the design `batch`
does not use).

    PYTHONPATH=src python benchmarks/batch.py [--repeats 3] [--skip-mobilenet]

Figures are medians of --repeats runs of each configuration, all in this one run. On this
2-core machine it takes about 10 minutes. Not run by the test suite.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CLI = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def tiny(folder: Path, shards: int, per_shard: int) -> tuple[Path, list[Path], int]:
    from shipyard import examples

    model = folder / "mlp.onnx"
    examples.onnx_mlp(model)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(shards):
        paths.append(folder / f"tiny-{i:02d}.npy")
        np.save(paths[-1], rng.standard_normal((per_shard, 16)).astype("float32"))
    return model, paths, 256


def mobilenet(folder: Path, shards: int, per_shard: int) -> tuple[Path, list[Path], int]:
    import keras

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import keras_to_onnx

    model = keras_to_onnx(keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
                          folder / "mobilenet_v2.onnx")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(shards):
        paths.append(folder / f"mnv2-{i:02d}.npy")
        np.save(paths[-1], rng.uniform(-1, 1, (per_shard, 224, 224, 3)).astype("float32"))
    return model, paths, 16


def plain_loop(model: Path, paths: list[Path], batch: int, threads: int = 2) -> float:
    """The peer: open the runner once, loop over the shards' batches, keep the outputs."""
    from shipyard.runtimes import open_runner

    with open_runner(model, threads=threads) as runner:
        name = runner.signature.inputs[0].name
        start = time.perf_counter()
        kept = []
        for path in paths:
            x = np.load(path)
            for i in range(0, len(x), batch):
                kept.append(runner.run({name: x[i:i + batch]}))
        return time.perf_counter() - start


def batch_job(model: Path, pattern: str, batch: int, out: Path, extra: list[str]) -> tuple[float, float]:
    """(job seconds as the summary reports them, wall seconds of the whole command)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, "batch", str(model), "--inputs", pattern, "--batch-size",
                           str(batch), "-o", str(out), "--json", *extra], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout)["run"]["seconds"], wall


def shard_costs(manifest_path: Path) -> tuple[float, float]:
    """(seconds from the job's start to its first result beyond that shard's work, median seconds
    between consecutive results beyond each shard's work) of a one-worker job."""
    manifest = json.loads(manifest_path.read_text())
    started = manifest["timings"]["runs"][-1]["started"]
    done = sorted(manifest["shards"].values(), key=lambda e: e["finished"])
    gaps = [b["finished"] - a["finished"] - b["seconds"] for a, b in itertools.pairwise(done)]
    return done[0]["finished"] - started - done[0]["seconds"], statistics.median(gaps)


def ray_stream_per_batch(address: str, model: Path, x: np.ndarray, batch: int) -> float:
    """Seconds Ray Data adds per batch when the examples themselves are the rows: the pipeline
    over all of ``x`` minus the same over a quarter of it (start-up cancels), per extra batch,
    less what the plain loop spends per batch."""
    import ray
    import ray.data

    class Model:
        def __init__(self):
            from shipyard.runtimes import open_runner

            self.runner = open_runner(str(model), threads=1)

        def __call__(self, rows):
            return {"y": self.runner.run({"x": rows["x"]})["y"]}

    ray.init(address=address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def timed(data: np.ndarray) -> float:
        start = time.perf_counter()
        ds = ray.data.from_items([{"x": row} for row in data]).map_batches(
            Model, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        for _ in ds.iter_batches(batch_size=None):
            pass
        return time.perf_counter() - start

    quarter = x[: len(x) // 4]
    try:
        few, many = timed(quarter), timed(x)
    finally:
        ray.shutdown()
    loop_per_batch = plain_loop_array(model, x, batch) / (len(x) / batch)
    return (many - few) / ((len(x) - len(quarter)) / batch) - loop_per_batch


def plain_loop_array(model: Path, x: np.ndarray, batch: int) -> float:
    from shipyard.runtimes import open_runner

    with open_runner(model, threads=1) as runner:
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            runner.run({"x": x[i:i + batch]})
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-mobilenet", action="store_true")
    args = parser.parse_args()
    from ray_cluster import Cluster

    work = Path(tempfile.mkdtemp(prefix="shipyard-batch-bench-"))
    cases = [("tiny MLP", tiny(work, 8, 25_000))]
    if not args.skip_mobilenet:
        cases.append(("MobileNetV2", mobilenet(work, 4, 48)))
    cluster = Cluster()
    cluster.start_head()
    cluster._start("--address", cluster.address)  # a second CPU for the 2-actor runs (same machine)
    rows, overheads = [], []
    try:
        for label, (model, paths, batch) in cases:
            examples = sum(len(np.load(p, mmap_mode="r")) for p in paths)
            pattern = str(paths[0].parent / (paths[0].name.split("-")[0] + "-*.npy"))
            configs = {
                "plain loop over the runner (2 threads)": None,
                "batch local, 1 worker (2 threads)": ["--workers", "1", "--threads", "2"],
                "batch local, 2 workers (1 thread each)": ["--workers", "2", "--threads", "1"],
                "batch --ray, 1 actor (1 thread)": ["--ray", cluster.address, "--workers", "1", "--threads", "1"],
                "batch --ray, 2 actors (1 thread each)": ["--ray", cluster.address, "--workers", "2", "--threads", "1"],
            }
            results: dict[str, tuple[float, float]] = {}
            for name, extra in configs.items():
                job, wall = [], []
                for r in range(args.repeats):
                    if extra is None:
                        job.append(plain_loop(model, paths, batch))
                        wall.append(job[-1])
                    else:
                        j, w = batch_job(model, pattern, batch, work / f"out-{label[:4]}-{len(results)}-{r}", extra)
                        job.append(j)
                        wall.append(w)
                results[name] = (statistics.median(job), statistics.median(wall))
                print(f"  {label}: {name}: {results[name][0]:.2f} s", file=sys.stderr)
            peer = results["plain loop over the runner (2 threads)"][0]
            for name, (job, wall) in results.items():
                rows.append((label, name, examples / job, job, wall, peer / job))
            # what Ray adds: per job (joining, starting the actor) and per shard (a task, a row, a
            # result), from the manifest of a 1-worker job over 16 small shards: the time from the
            # job's start to the first result beyond that shard's own work, and the median gap
            # between consecutive results beyond each shard's own work
            small_dir = work / f"small-{label[:4]}"
            small_dir.mkdir()
            first = np.load(paths[0], mmap_mode="r")
            rows_per = max(1, min(4, len(first) // 16))
            for i in range(16):
                np.save(small_dir / f"s-{i:02d}.npy", np.asarray(first[i * rows_per:(i + 1) * rows_per]))
            costs = {}
            for mode, extra in (("local", ["--workers", "1", "--threads", "1"]),
                                ("ray", ["--ray", cluster.address, "--workers", "1", "--threads", "1"])):
                fixed, gaps = [], []
                for r in range(args.repeats):
                    out = work / f"small-{label[:4]}-{mode}-{r}"
                    batch_job(model, str(small_dir / "s-*.npy"), batch, out, extra)
                    f, g = shard_costs(out / "manifest.json")
                    fixed.append(f)
                    gaps.append(g)
                costs[mode] = (statistics.median(fixed), statistics.median(gaps))
            overheads.append((label, "start of a job to its first result, beyond the shard's work: local s",
                              costs["local"][0]))
            overheads.append((label, "start of a job to its first result, beyond the shard's work: ray s",
                              costs["ray"][0]))
            overheads.append((label, "per shard beyond its own work (task, row, result): local ms", costs["local"][1] * 1e3))
            overheads.append((label, "per shard beyond its own work (task, row, result): ray ms", costs["ray"][1] * 1e3))
        x = np.load(cases[0][1][1][0])[:20_000]
        overheads.append(("tiny MLP", "Ray Data streaming example rows: cost per batch of 256 ms",
                          ray_stream_per_batch(cluster.address, cases[0][1][0], x, 256) * 1e3))
    finally:
        cluster.stop()
    print(f"\n{'model':<12} {'configuration':<42} {'examples/s':>11} {'job s':>7} {'wall s':>7} {'x loop':>7}")
    for label, name, rate, job, wall, ratio in rows:
        print(f"{label:<12} {name:<42} {rate:>11,.0f} {job:>7.2f} {wall:>7.2f} {ratio:>7.2f}")
    print()
    for label, name, value in overheads:
        print(f"{label:<12} {name:<62} {value:>8.2f}")
    print("\njob s: the run as `batch --json` reports it (workers/actors started, shards read, run, written);"
          " wall s: the whole command (interpreter, imports, model check). x loop: loop time / job time.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
