"""`shipyard serve --ray` (Ray Serve, 1 and 2 replicas) against plain `shipyard serve`, one run,
same repository (the tiny ONNX MLP, KServe v2 JSON), same closed-loop load generator
(benchmarks/serve/loadgen.py) on this machine: requests/s and p50/p99 at concurrency 1, 8, 32.

    PYTHONPATH=src python benchmarks/ray_serve.py [--seconds 3]

Takes about 3 minutes on 2 cores (most of it Ray starting). Not run by the test suite.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "serve"))
import loadgen

CLI = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"


def start(repo: Path, tag: str, *extra: str) -> tuple[subprocess.Popen, int]:
    ready = repo.parent / f"ready-{tag}.json"
    log = open(repo.parent / f"{tag}.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", str(repo), "--rest-port", "0", "--grpc-port", "-1",
                             "--no-access-log", "--threads", "1", "--ready-file", str(ready), *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((repo.parent / f"{tag}.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())["rest_port"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    from shipyard import examples

    repo = Path(tempfile.mkdtemp(prefix="shipyard-ray-serve-bench-")) / "repo"
    examples.onnx_mlp(repo / "mlp" / "1" / "model.onnx")
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}).encode()
    configs = {"shipyard serve": (), "serve --ray, 1 replica": ("--ray", "--replicas", "1"),
               "serve --ray, 2 replicas": ("--ray", "--replicas", "2")}
    results = {}
    for name, extra in configs.items():
        proc, port = start(repo, name.replace(" ", "_").replace(",", ""), *extra)
        try:
            request = loadgen.build_request(port, "/v2/models/mlp/infer", body)
            for c in (1, 8, 32):
                r = loadgen.run(port, request, c, args.seconds, warmup=1.0)
                results[(name, c)] = r
                print(f"  {name} c={c}: {r.rps:,.0f} req/s, p99 {r.percentile(99):.1f} ms, {r.errors} errors",
                      file=sys.stderr)
        finally:
            stop(proc)
    print(f"\n{'server':<26} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x serve':>8}")
    for (name, c), r in results.items():
        peer = results[("shipyard serve", c)].rps
        print(f"{name:<26} {c:>3} {r.rps:>8,.0f} {r.p50:>8.1f} {r.percentile(99):>8.1f} {r.errors:>7} {r.rps / peer:>8.2f}")
    print("\nx serve: requests/s relative to plain `shipyard serve` at the same concurrency (1 engine thread each).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
