"""``serve --workers N``: several processes answering on the same ports.

The supervisor binds the REST socket once and hands its file descriptor to every worker
(uvicorn accepts on an inherited socket; the kernel spreads connections among the
processes blocked in accept). gRPC listeners share their port with SO_REUSEPORT; the
supervisor holds the port with a bound, non-listening socket so a free port (0) is the same
for all. Each worker is a full ``shipyard serve`` (its own manager, watcher and batchers),
started with exec rather than fork so that no engine thread pool is inherited. Weights are
shared between workers where the engine reads them in place from a memory-mapped file
(TFLite with ``--share-weights``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipyard.errors import UsageError

log = logging.getLogger("shipyard.serve")


def _worker_args(opts, fd: int, rest_port: int, grpc_port: int | None, ready: Path) -> list[str]:
    args = [sys.executable, "-m", "shipyard", "serve", str(opts.repo), "--worker-fd", str(fd), "--host", opts.host,
            "--rest-port", str(rest_port), "--grpc-port", str(grpc_port if grpc_port is not None else -1),
            "--max-request-mb", str(opts.max_request_bytes / (1 << 20)), "--poll-seconds", str(opts.poll_seconds),
            "--ready-file", str(ready)]
    if opts.threads:
        args += ["--threads", str(opts.threads)]
    if opts.auth_token_file:
        args += ["--auth-token-file", str(opts.auth_token_file)]
    if not opts.access_log:
        args.append("--no-access-log")
    if opts.share_weights:
        args.append("--share-weights")
    if opts.metrics_open:
        args.append("--metrics-open")
    return args


def supervise(opts) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        rest = socket.create_server((opts.host, opts.rest_port), backlog=2048)
    except OSError as exc:
        raise UsageError(f"cannot listen on {opts.host}:{opts.rest_port} ({exc.strerror})", hint="pick another --rest-port, or 0") from exc
    os.set_inheritable(rest.fileno(), True)
    rest_port = rest.getsockname()[1]
    holder = None
    grpc_port = opts.grpc_port
    if grpc_port is not None:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((opts.host, grpc_port))
        except OSError as exc:
            raise UsageError(f"cannot listen for gRPC on {opts.host}:{grpc_port} ({exc.strerror})") from exc
        grpc_port = holder.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="shipyard-workers-"))
    ready = [work / f"worker{i}.json" for i in range(opts.workers)]
    procs = [subprocess.Popen(_worker_args(opts, rest.fileno(), rest_port, grpc_port, r), pass_fds=(rest.fileno(),))
             for r in ready]
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not all(r.exists() for r in ready):
            if stopping:
                break  # Ctrl-C or SIGTERM while starting: the workers are told; wait for them below
            dead = [p for p in procs if p.poll() is not None]
            if dead and not stopping:
                stop(None, None)
                raise UsageError(f"a worker exited while starting (exit {dead[0].returncode}); see its messages above")
            time.sleep(0.05)
        if not stopping:
            _announce(opts, rest_port, grpc_port, procs)
        codes = []
        for p in procs:
            while p.poll() is None:
                try:
                    p.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if not stopping and any(q.poll() is not None for q in procs):
                        log.info(json.dumps({"event": "worker_exited", "stopping": "all"}))
                        stop(None, None)
            codes.append(p.returncode)
        return 0 if stopping and all(c == 0 for c in codes) else max(1, *codes)
    finally:
        rest.close()
        if holder is not None:
            holder.close()
        shutil.rmtree(work, ignore_errors=True)


def _announce(opts, rest_port: int, grpc_port: int | None, procs: list[subprocess.Popen]) -> None:
    """Log the listening event (and write --ready-file) once every worker is up."""
    info = {"rest_port": rest_port, "grpc_port": grpc_port, "host": opts.host, "workers": opts.workers,
            "pids": [p.pid for p in procs]}
    log.info(json.dumps({"event": "listening", **info}))
    if opts.ready_file is not None:
        tmp = opts.ready_file.with_name(opts.ready_file.name + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(opts.ready_file)
