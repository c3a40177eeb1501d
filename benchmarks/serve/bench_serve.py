"""shipyard serve vs a bare Starlette endpoint, PyTriton, MLServer and BentoML, side by side
in one run, on the same ONNX models.

    python benchmarks/serve/bench_serve.py                     # tiny MLP + MobileNetV2, c = 1, 8, 32
    python benchmarks/serve/bench_serve.py --models mlp --seconds 3 --repeat 3
    python benchmarks/serve/bench_serve.py --baseline-src /tmp/old/src   # + "shipyard-base": another checkout's serve

Every server runs onnxruntime with one intra-op thread on the same model file, bound to
127.0.0.1; one closed-loop load generator (loadgen.py) on the same machine drives each in
turn. Peers live in their own virtual environments under $SHIPYARD_BENCH_CACHE
(default ~/.cache/shipyard-bench), created on first use; they are never installed in CI.
The bare endpoint (peers/bare_starlette.py: parse, run, answer; no validation, batching,
metrics or limits) is the floor a server's overhead per request is measured against.
With --repeat N every server is measured N times, in rounds (all servers once, then again),
and the medians are reported: on a shared machine that spreads the noise over every server.
Prints throughput and p50/p99 latency per point, then shipyard's ratios against each peer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
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
    # The real Triton server (2.51 binary in the wheel); it downgrades numpy, hence its own venv.
    "pytriton": ["nvidia-pytriton==0.7.0", "onnxruntime", "numpy"],
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


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of session ``sid`` (a server
    and the workers it forked): CPU per request is steadier than requests/s on a shared machine."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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


ACCESS_LOG = False  # --access-log: shipyard logs every request (to /dev/null) as it does by default
MAX_BATCH = 32  # --max-batch-size: shipyard's dynamic batching (1 = off, serve's default)


def start_shipyard(model: Path, work: Path, port: int, src: Path = HERE.parents[1] / "src") -> subprocess.Popen:
    repo = work / "shipyard-repo"
    (repo / "m" / "1").mkdir(parents=True, exist_ok=True)
    target = repo / "m" / "1" / "model.onnx"
    target.unlink(missing_ok=True)  # the repository is reused from model to model
    target.symlink_to(model)
    (repo / "m" / "config.json").write_text(json.dumps(
        {"threads": 1, "batching": {"max_batch_size": MAX_BATCH, "max_queue_delay_ms": 0, "max_queue_size": 1024}}))
    env = {**os.environ, "PYTHONPATH": str(src)}
    return spawn([sys.executable, "-m", "shipyard", "serve", str(repo), "--rest-port", str(port),
                  "--grpc-port", "-1", *([] if ACCESS_LOG else ["--no-access-log"])], env,
                 f"http://127.0.0.1:{port}/v2/health/ready")


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


def start_bare(model: Path, work: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "BENCH_MODEL": str(model), "BENCH_PORT": str(port), "BENCH_THREADS": "1"}
    return spawn([sys.executable, str(HERE / "peers" / "bare_starlette.py")], env,
                 f"http://127.0.0.1:{port}/v2/health/ready")


def start_pytriton(model: Path, work: Path, port: int) -> subprocess.Popen:
    venv = ensure_venv("pytriton")
    # Triton's Python-backend stub must link this interpreter's own libpython, not Debian's
    # (otherwise: "'_thread.RLock' object has no attribute '_recursion_count'").
    libdir = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "BENCH_MODEL": str(model), "BENCH_PORT": str(port), "BENCH_THREADS": "1",
           "BENCH_GRPC_PORT": str(free_port()), "BENCH_METRICS_PORT": str(free_port()),
           "LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    env.pop("VIRTUAL_ENV", None)
    d = work / "pytriton"
    d.mkdir(exist_ok=True)
    return spawn([str(venv / "bin" / "python"), str(HERE / "peers" / "pytriton_server.py")], env,
                 f"http://127.0.0.1:{port}/v2/models/m/ready", d)


# -- requests ----------------------------------------------------------------------------------


def requests_for(server: str, x: np.ndarray, port: int, name: str) -> dict[str, bytes]:
    """{protocol label: raw HTTP request} each server is sent (its own REST protocol)."""
    values = np.round(x, 4).ravel().tolist()
    v2 = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": values}]}).encode()
    if server == "bentoml":
        return {"json": loadgen.build_request(port, "/predict", json.dumps({"x": np.round(x, 4).tolist()}).encode())}
    out = {"v2 json": loadgen.build_request(port, "/v2/models/m/infer", v2)}
    if server in ("shipyard", "shipyard-base", "bare", "pytriton"):
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
    parser.add_argument("--servers", nargs="+", default=["shipyard", "bare", "pytriton", "mlserver", "bentoml"],
                        help="shipyard, shipyard-base (needs --baseline-src), bare, pytriton, mlserver, bentoml")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every server; medians are reported")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ served as 'shipyard-base'")
    parser.add_argument("--mlp-binary", action="store_true", help="also send the MLP binary tensors")
    parser.add_argument("--protocols", nargs="+", help="only these protocol labels ('v2 json', 'v2 binary', 'json')")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="shipyard's dynamic batching limit (1: no batching, serve's default)")
    parser.add_argument("--access-log", action="store_true",
                        help="shipyard with its access log on (its default; the peers have none)")
    args = parser.parse_args()
    global ACCESS_LOG, MAX_BATCH
    ACCESS_LOG = args.access_log
    MAX_BATCH = args.max_batch_size
    if args.baseline_src is not None and "shipyard-base" not in args.servers:
        args.servers.insert(1, "shipyard-base")
    starters = {"shipyard": start_shipyard, "bare": start_bare, "pytriton": start_pytriton,
                "mlserver": start_mlserver, "bentoml": start_bentoml,
                "shipyard-base": lambda m, w, p: start_shipyard(m, w, p, args.baseline_src.resolve())}
    points: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model_name in args.models:
            model = build_model(model_name, work)
            shape = (1, 16) if model_name == "mlp" else (1, 224, 224, 3)
            x = np.random.default_rng(0).standard_normal(shape).astype("float32")
            for round_ in range(args.repeat):
                for server in args.servers:
                    port = free_port()
                    try:
                        proc = starters[server](model, work, port)
                    except (RuntimeError, subprocess.CalledProcessError) as exc:
                        print(f"{server}: could not start ({exc})", file=sys.stderr)
                        continue
                    try:
                        reqs = requests_for(server, x, port, input_name(model))
                        if model_name == "mlp" and not args.mlp_binary:
                            reqs.pop("v2 binary", None)
                        if args.protocols:
                            reqs = {k: v for k, v in reqs.items() if k in args.protocols}
                        for label, request in reqs.items():
                            for c in args.concurrency:
                                cpu0 = session_cpu(proc.pid)
                                r = loadgen.run(port, request, c, args.seconds, warmup=1.0)
                                # over warm-up + measurement: requests in the warm-up are not counted, so
                                # scale by the measured share of the time (closed loop: a steady rate)
                                r.cpu_us = (session_cpu(proc.pid) - cpu0) * args.seconds / (args.seconds + 1.0) \
                                    / max(r.requests, 1) * 1e6
                                points.setdefault((model_name, server, label, c), []).append(r)
                                print(f"{model_name:12s} {server:13s} {label:10s} c={c:<3d} round {round_ + 1}: "
                                      f"{r.rps:8.0f} req/s  p50 {r.p50:7.2f} ms  p99 {r.percentile(99):7.2f} ms  "
                                      f"cpu {r.cpu_us:6.0f} us/req  errors {r.errors}" + (f"  ({r.first_error[:80]})" if r.errors else ""), flush=True)
                    finally:
                        stop(proc)
    table = {key: (statistics.median(r.rps for r in rs), statistics.median(r.percentile(99) for r in rs), len(rs),
                   statistics.median(r.cpu_us for r in rs)) for key, rs in points.items()}
    print_table(table)
    print_ratios(table)
    return 0


def print_table(table) -> None:
    print("\nmedians over rounds")
    print("| model | server | protocol | c | req/s | p99 ms | server CPU us/request | rounds |\n|---|---|---|---|---|---|---|---|")
    for (model, server, label, c), (rps, p99, n, cpu) in table.items():
        print(f"| {model} | {server} | {label} | {c} | {rps:.0f} | {p99:.2f} | {cpu:.0f} | {n} |")


def print_ratios(table) -> None:
    print("\nshipyard / peer, medians (throughput ratio > 1 and p99 ratio < 1 mean shipyard is ahead)")
    print(f"{'model':12s} {'shipyard protocol':18s} {'peer':13s} {'peer protocol':14s} {'c':>3s} "
          f"{'req/s ratio':>12s} {'p99 ratio':>10s}")
    for (model, server, label, c), (rps, p99, *_) in table.items():
        if server == "shipyard":
            continue
        for (s_model, s_server, s_label, s_c), (s_rps, s_p99, *_) in table.items():
            if s_server != "shipyard" or s_model != model or s_c != c:
                continue
            if server != "bentoml" and label != s_label:
                continue  # same protocol side by side (BentoML has only its own JSON)
            print(f"{model:12s} {s_label:18s} {server:13s} {label:14s} {c:3d} "
                  f"{s_rps / rps if rps else float('inf'):12.2f} {s_p99 / p99:10.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
