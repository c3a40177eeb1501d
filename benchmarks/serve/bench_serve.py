"""shipyard serve vs MLServer and BentoML, side by side in one run, on the same ONNX models.

    python benchmarks/serve/bench_serve.py                     # tiny MLP + MobileNetV2, c = 1, 8, 32
    python benchmarks/serve/bench_serve.py --models mlp --seconds 3

Every server runs onnxruntime with one intra-op thread on the same model file, bound to
127.0.0.1; one closed-loop load generator (loadgen.py) on the same machine drives each in
turn. Peers live in their own virtual environments under $SHIPYARD_BENCH_CACHE
(default ~/.cache/shipyard-bench), created on first use; they are never installed in CI.
Prints throughput and p50/p99 latency per point, then shipyard's ratios against each peer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loadgen

CACHE = Path(os.environ.get("SHIPYARD_BENCH_CACHE", Path.home() / ".cache" / "shipyard-bench"))
PEERS = {
    # MLServer 1.7.1 pulls uvloop 0.23, with which its inference worker dies: pin uvloop < 0.22.
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "numpy"],
    "bentoml": ["bentoml==1.4.39", "onnxruntime", "numpy"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_venv(name: str) -> Path:
    venv = CACHE / name
    stamp = venv / ".bench-ready"
    if not stamp.exists():
        print(f"creating {venv} (first run only)", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PEERS[name]], check=True)
        stamp.write_text("ok")
    return venv


def build_model(name: str, workdir: Path) -> Path:
    from shipyard import examples

    if name == "mlp":
        examples.onnx_mlp(workdir / "mlp.onnx", seed=0)
        return workdir / "mlp.onnx"
    cached = CACHE / "mobilenetv2.onnx"
    if not cached.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        code = (
            "import numpy as np, tensorflow as tf, keras, tf2onnx\n"
            "m = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))\n"
            "spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name='input'),)\n"
            f"tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path={str(cached)!r})\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return cached


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this script started (bentoml forks workers)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- servers ---------------------------------------------------------------------------------


def spawn(cmd: list[str], env: dict[str, str], ready_url: str, cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in a process group of its own and wait until ``ready_url`` answers 200."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(ready_url, proc)
    except RuntimeError:
        stop(proc)
        raise
    return proc


def start_shipyard(model: Path, work: Path, port: int) -> subprocess.Popen:
    repo = work / "shipyard-repo"
    (repo / "m" / "1").mkdir(parents=True, exist_ok=True)
    target = repo / "m" / "1" / "model.onnx"
    target.unlink(missing_ok=True)  # the repository is reused from model to model
    target.symlink_to(model)
    (repo / "m" / "config.json").write_text(json.dumps(
        {"threads": 1, "batching": {"max_batch_size": 32, "max_queue_delay_ms": 0, "max_queue_size": 1024}}))
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")}
    return spawn([sys.executable, "-m", "shipyard", "serve", str(repo), "--rest-port", str(port),
                  "--grpc-port", "-1", "--no-access-log"], env, f"http://127.0.0.1:{port}/v2/health/ready")


def start_mlserver(model: Path, work: Path, port: int) -> subprocess.Popen:
    venv = ensure_venv("mlserver")
    d = work / "mlserver"
    d.mkdir(exist_ok=True)
    (d / "mlserver_runtime.py").write_text((HERE / "peers" / "mlserver_runtime.py").read_text())
    (d / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "debug": False}))
    (d / "model-settings.json").write_text(json.dumps({
        "name": "m", "implementation": "mlserver_runtime.OnnxModel",
        "parameters": {"uri": str(model), "extra": {"threads": 1}}}))
    env = {**os.environ, "PYTHONPATH": str(d), "MLSERVER_LOGGING_LEVEL": "WARNING"}
    env.pop("VIRTUAL_ENV", None)
    return spawn([str(venv / "bin" / "mlserver"), "start", str(d)], env, f"http://127.0.0.1:{port}/v2/models/m/ready", d)


def start_bentoml(model: Path, work: Path, port: int) -> subprocess.Popen:
    venv = ensure_venv("bentoml")
    d = work / "bentoml"
    d.mkdir(exist_ok=True)
    (d / "bento_service.py").write_text((HERE / "peers" / "bento_service.py").read_text())
    env = {**os.environ, "BENTOML_HOME": str(d / "home"), "BENTOML_DO_NOT_TRACK": "true", "BENCH_MODEL": str(model),
           "BENCH_THREADS": "1",
           "BENTOML_CONFIG_OPTIONS": "api_server.logging.access.enabled=false"}
    return spawn([str(venv / "bin" / "bentoml"), "serve", "bento_service:OnnxService", "--host", "127.0.0.1",
                  "--port", str(port)], env, f"http://127.0.0.1:{port}/readyz", d)


# -- requests ----------------------------------------------------------------------------------


def requests_for(server: str, x: np.ndarray, port: int, name: str) -> dict[str, bytes]:
    """{protocol label: raw HTTP request} each server is sent (its own REST protocol)."""
    values = np.round(x, 4).ravel().tolist()
    v2 = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": values}]}).encode()
    if server == "bentoml":
        return {"json": loadgen.build_request(port, "/predict", json.dumps({"x": np.round(x, 4).tolist()}).encode())}
    out = {"v2 json": loadgen.build_request(port, "/v2/models/m/infer", v2)}
    if server == "shipyard":
        head = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}}).encode()
        out["v2 binary"] = loadgen.build_request(port, "/v2/models/m/infer", head + x.tobytes(),
                                                 {"Inference-Header-Content-Length": str(len(head))})
    return out


def input_name(model: Path) -> str:
    import onnx

    return onnx.load(str(model), load_external_data=False).graph.input[0].name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "mobilenetv2"])
    parser.add_argument("--servers", nargs="+", default=["shipyard", "mlserver", "bentoml"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    starters = {"shipyard": start_shipyard, "mlserver": start_mlserver, "bentoml": start_bentoml}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model_name in args.models:
            model = build_model(model_name, work)
            shape = (1, 16) if model_name == "mlp" else (1, 224, 224, 3)
            x = np.random.default_rng(0).standard_normal(shape).astype("float32")
            for server in args.servers:
                port = free_port()
                try:
                    proc = starters[server](model, work, port)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    print(f"{server}: could not start ({exc})", file=sys.stderr)
                    continue
                try:
                    reqs = requests_for(server, x, port, input_name(model))
                    if model_name == "mlp":
                        reqs.pop("v2 binary", None)
                    for label, request in reqs.items():
                        for c in args.concurrency:
                            r = loadgen.run(port, request, c, args.seconds, warmup=1.0)
                            rows.append((model_name, server, label, c, r))
                            print(f"{model_name:12s} {server:9s} {label:10s} c={c:<3d} {r.rps:8.0f} req/s  "
                                  f"p50 {r.p50:7.2f} ms  p99 {r.percentile(99):7.2f} ms  errors {r.errors}"
                                  + (f"  ({r.first_error[:80]})" if r.errors else ""), flush=True)
                finally:
                    stop(proc)
    print_ratios(rows)
    return 0


def print_ratios(rows) -> None:
    print("\nshipyard / peer (throughput ratio > 1 and p99 ratio < 1 mean shipyard is ahead)")
    print(f"{'model':12s} {'shipyard protocol':18s} {'peer':9s} {'c':>3s} {'req/s ratio':>12s} {'p99 ratio':>10s}")
    best = {}
    for model, server, label, c, r in rows:
        if server == "shipyard":
            best.setdefault((model, c), []).append((label, r))
    for model, server, label, c, r in rows:
        if server == "shipyard":
            continue
        for s_label, s in best.get((model, c), []):
            print(f"{model:12s} {s_label:18s} {server:9s} {c:3d} {s.rps / r.rps if r.rps else float('inf'):12.2f} "
                  f"{s.percentile(99) / r.percentile(99):10.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
