"""What TF's memory-mapped graph format buys a C/C++ program: load time and peak memory of the
`shipyard cpp` program on a frozen .pb (TF C API) against the same graph as a memory-mapped file
(TF C++ MemmappedEnv), in one run on this machine.

    python benchmarks/memmapped_load.py [--mb 64] [--runs 5]

The graph is an MLP whose weights total about --mb megabytes (float32), so the weights dominate
the file. Each program is run --runs times (load, one warm-up run, --repeat 10 timed runs);
the table shows medians and the ratio memmapped / frozen.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def mlp_graph(path: Path, megabytes: int) -> None:
    import tensorflow as tf

    width = 1024
    layers = max(1, round(megabytes * 2**20 / (width * width * 4)))
    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        h = tf.compat.v1.placeholder(tf.float32, [None, width], name="x")
        for i in range(layers):
            w = tf.constant((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name=f"w{i}")
            h = tf.nn.relu(tf.matmul(h, w))
        tf.identity(h, name="y")
    path.write_bytes(g.as_graph_def().SerializeToString())


def shipyard(*args) -> None:
    subprocess.run([sys.executable, "-m", "shipyard", *map(str, args)], check=True, capture_output=True)


def measure(project: Path, runs: int) -> dict[str, float]:
    loads, medians, rss = [], [], []
    out = project / "outputs"
    out.mkdir(exist_ok=True)
    for _ in range(runs):
        proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", "./bin/run_model", "--repeat", "10",
                               "--threads", "1"], cwd=project, capture_output=True, text=True, check=True)
        text = proc.stdout + proc.stderr
        loads.append(float(re.search(r"load_ms (\S+)", text).group(1)))
        medians.append(float(re.search(r"median_ms (\S+)", text).group(1)))
        rss.append(float(re.search(r"maxrss_kb (\d+)", text).group(1)) / 1024)
    return {"load ms": statistics.median(loads), "run ms": statistics.median(medians),
            "peak RSS MB": statistics.median(rss)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mlp_graph(root / "mlp.pb", args.mb)
        shipyard("convert", root / "mlp.pb", "--to", "memmapped", "-o", root / "mlp.mmpb")
        shipyard("cpp", root / "mlp.pb", "--lang", "c", "-o", root / "frozen_app", "--build")
        shipyard("cpp", root / "mlp.mmpb", "-o", root / "memmapped_app", "--build")
        frozen = measure(root / "frozen_app", args.runs)
        mapped = measure(root / "memmapped_app", args.runs)
        sizes = {p: (root / p).stat().st_size / 2**20 for p in ("mlp.pb", "mlp.mmpb")}
    print(f"MLP, {sizes['mlp.pb']:.1f} MB frozen .pb / {sizes['mlp.mmpb']:.1f} MB .mmpb; "
          f"batch 1, 1 thread, median of {args.runs} program runs")
    print("| figure | frozen .pb (C API) | memmapped (MemmappedEnv) | ratio |")
    print("|---|---|---|---|")
    for key in frozen:
        print(f"| {key} | {frozen[key]:.2f} | {mapped[key]:.2f} | {mapped[key] / frozen[key]:.2f} |")


if __name__ == "__main__":
    main()
