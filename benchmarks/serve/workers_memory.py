"""Resident memory of `shipyard serve --workers N`: are the weights shared between workers?

Run: .venv/bin/python benchmarks/serve/workers_memory.py [--model model.tflite]
Default model: Keras ResNet50 (random weights) as float TFLite (~100 MB), built once into
~/.cache/shipyard-bench. For 1 and 4 workers, with XNNPACK (weights repacked per process) and
with --share-weights (builtin kernels on the memory-mapped file), the script starts the server
on loopback, sends 32 requests at concurrency 4 so every worker has run the model, then sums
PSS (proportional set size: shared pages split between the processes that map them) and
USS (private pages) over the server's whole process tree from /proc/PID/smaps_rollup.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("SHIPYARD_BENCH_CACHE", Path.home() / ".cache" / "shipyard-bench"))


def build(name: str, expression: str) -> Path:
    """A float TFLite file of a Keras model, built once into the cache."""
    path = CACHE / f"{name}.tflite"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        code = (f"import keras, tensorflow as tf, pathlib; m = {expression}; "
                f"pathlib.Path({str(path)!r}).write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def memory(pids: list[int]) -> tuple[float, float]:
    pss = uss = 0
    for pid in pids:
        try:
            fields = {l.split()[0][:-1]: int(l.split()[1]) for l in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]}
        except OSError:
            continue
        pss += fields.get("Pss", 0)
        uss += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return pss / 1024, uss / 1024


def run(model: Path, workers: int, share: bool) -> dict:
    repo = Path(tempfile.mkdtemp(prefix="shipyard-mem-"))
    (repo / "m" / "1").mkdir(parents=True)
    os.symlink(model, repo / "m" / "1" / "model.tflite")
    ready = repo / "ready.json"
    cmd = [sys.executable, "-m", "shipyard", "serve", str(repo), "--rest-port", "0", "--grpc-port", "-1", "--threads", "1",
           "--workers", str(workers), "--no-access-log", "--ready-file", str(ready)] + (["--share-weights"] if share else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready.exists():
            assert proc.poll() is None, "server died"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["rest_port"]
        base = f"http://127.0.0.1:{port}/v2/models/m"
        while True:
            try:
                if urllib.request.urlopen(f"{base}/ready", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        name = json.loads(urllib.request.urlopen(base).read())["inputs"][0]["name"]
        shape = [d if d > 0 else 1 for d in json.loads(urllib.request.urlopen(base).read())["inputs"][0]["shape"]]
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()

        def ask(_):
            req = urllib.request.Request(f"{base}/infer", body, {"Content-Type": "application/json"})
            return urllib.request.urlopen(req, timeout=120).status

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(ask, range(32)))
        assert all(s == 200 for s in statuses)
        time.sleep(0.5)
        pss, uss = memory(tree(proc.pid))
        return {"workers": workers, "share": share, "pss_mb": pss, "uss_mb": uss}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    model = (args.model or build("resnet50_float", "keras.applications.ResNet50(weights=None)")).absolute()
    tiny = build("tiny_float", "keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])")
    size = model.stat().st_size / 2**20
    # The same server with a 1 KB model: what a worker costs without weights (Python, engines, buffers).
    baseline = {w: run(tiny, w, False) for w in (1, 4)}
    base_extra = (baseline[4]["pss_mb"] - baseline[1]["pss_mb"]) / 3
    rows = [run(model, w, share) for share in (False, True) for w in (1, 4)]
    print(f"model {model.name}: {size:.1f} MB on disk; PSS/USS summed over the server's whole process tree")
    print(f"a worker without weights (1 KB model) costs {base_extra:.1f} MB PSS\n")
    print(f"{'weights':<31} {'workers':>7} {'PSS MB':>8} {'USS MB':>8} {'per extra worker':>17} {'weights part':>13} {'/ model':>8}")
    for share in (False, True):
        one, four = [r for r in rows if r["share"] == share]
        extra = (four["pss_mb"] - one["pss_mb"]) / 3
        label = "shared (mmap, --share-weights)" if share else "XNNPACK (copied per worker)"
        for r in (one, four):
            tail = f"{extra:>17.1f} {extra - base_extra:>13.1f} {(extra - base_extra) / size:>8.2f}" if r is four else ""
            print(f"{label:<31} {r['workers']:>7} {r['pss_mb']:>8.1f} {r['uss_mb']:>8.1f} {tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
