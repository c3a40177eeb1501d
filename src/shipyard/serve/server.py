"""Put the pieces together: manager + watcher + REST (uvicorn) + gRPC, and shut down gracefully.

On SIGTERM or SIGINT uvicorn stops accepting connections and finishes the requests in flight,
gRPC gets a grace period for its own, and the manager drains every version before exiting.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import UsageError
from shipyard.guard import interrupt_handler, repeated_interrupt


@dataclass
class ServeOptions:
    repo: Path
    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int | None = 8500
    auth_token: str | None = None
    max_request_bytes: int = 64 << 20
    threads: int | None = None
    poll_seconds: float = 2.0
    access_log: bool = True
    grace_seconds: float = 10.0
    ready_file: Path | None = None   # written (ports as JSON) once both listeners are up and the models loaded
    workers: int = 1                 # processes serving the same ports (see serve/workers.py)
    share_weights: bool = False      # TFLite: builtin kernels on the memory-mapped file, one copy for all workers
    auth_token_file: Path | None = None
    worker_fd: int | None = None     # inside a worker: the REST socket the supervisor bound
    metrics_open: bool = False       # /metrics without the token (Prometheus scrapers)


def read_token(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the auth token file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"the auth token file {path} is empty")
    return token


def serve(opts: ServeOptions) -> int:
    import uvicorn

    from shipyard.serve.grpc_server import GrpcAPI, start_grpc
    from shipyard.serve.http import protocol_class
    from shipyard.serve.manager import Manager
    from shipyard.serve.metrics import Metrics
    from shipyard.serve.rest import RestAPI, flush_access_log
    from shipyard.serve.watcher import RepositoryWatcher

    if not opts.repo.is_dir():
        raise UsageError(f"the model repository {opts.repo} is not a directory",
                         hint="lay it out as REPO/<model>/<version>/<model file>")
    if opts.workers > 1 and opts.worker_fd is None:
        from shipyard.serve.workers import supervise

        return supervise(opts)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("shipyard.serve.access").setLevel(logging.INFO if opts.access_log else logging.WARNING)
    metrics = Metrics()
    manager = Manager(opts.repo, metrics, default_threads=opts.threads, share_weights=opts.share_weights)
    watcher = RepositoryWatcher(opts.repo, manager.sync, opts.poll_seconds)
    grpc_server = None
    server = None
    try:
        manager.sync()
        watcher.start()
        grpc_port = None
        if opts.grpc_port is not None:
            grpc_server, grpc_port = start_grpc(GrpcAPI(manager, metrics, opts.auth_token, opts.max_request_bytes),
                                                opts.host, opts.grpc_port, reuse_port=opts.worker_fd is not None)
        rest = RestAPI(manager, metrics, opts.auth_token, opts.max_request_bytes, metrics_open=opts.metrics_open)
        where = {"fd": opts.worker_fd} if opts.worker_fd is not None else {"host": opts.host, "port": opts.rest_port}
        # proxy_headers off: nothing here reads the client address or scheme that uvicorn would
        # rewrite from X-Forwarded-* (a header scan and a middleware layer on every request).
        http = protocol_class()  # one send per answer (serve/http.py); uvicorn's own choice without httptools
        config = uvicorn.Config(rest.app, **where, log_level="critical", access_log=False, proxy_headers=False,
                                timeout_graceful_shutdown=opts.grace_seconds, lifespan="off",
                                **({"http": http} if http is not None else {}))
        server = _server_class(uvicorn)(config)
        threading.Thread(target=_announce, args=(server, manager, opts, grpc_port, watcher.mode), daemon=True).start()
        # uvicorn re-raises the signal that stopped it once it has shut down; with the default
        # actions that would kill the process (SIGTERM) or raise KeyboardInterrupt (Ctrl-C) before
        # the drain below. A stop asked for is a clean exit (0), so both get a no-op handler for
        # uvicorn to restore and re-raise into; Ctrl-C interrupts again once uvicorn is done.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        try:
            server.run()  # installs SIGTERM/SIGINT handlers; returns after in-flight requests finish
        except SystemExit:
            pass  # uvicorn exits when it cannot bind; reported below as a one-line error
        finally:
            signal.signal(signal.SIGINT, interrupt_handler)
    finally:
        flush_access_log()  # the access lines of the event loop's last turn (see rest._AccessBuffer)
        if grpc_server is not None:
            grpc_server.stop(opts.grace_seconds).wait()
        watcher.stop()
        manager.shutdown()
        logging.getLogger("shipyard.serve").info(json.dumps({"event": "stopped"}))
    if server is None or not server.started:
        raise UsageError(f"cannot listen on {opts.host}:{opts.rest_port}", hint="pick another --rest-port, or 0")
    return 0


def _announce(server, manager, opts: ServeOptions, grpc_port: int | None, watch_mode: str) -> None:
    """Log the bound ports once uvicorn listens and the first loads have finished, then write
    --ready-file: every version that can load is serving by then (one that fails to load does
    not hold it back; its error is in the model status)."""
    while not (server.started and manager.settled()) and not server.should_exit:
        time.sleep(0.02)
    if not server.started or server.should_exit:
        return
    port = server.servers[0].sockets[0].getsockname()[1]
    info = {"rest_port": port, "grpc_port": grpc_port, "host": opts.host, "watch": watch_mode}
    logging.getLogger("shipyard.serve").info(json.dumps({"event": "listening", **info}))
    if opts.ready_file is not None:
        tmp = opts.ready_file.with_name(opts.ready_file.name + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(opts.ready_file)


def _server_class(uvicorn):
    """uvicorn's Server, except that an interrupt arriving twice (see
    :func:`shipyard.guard.repeated_interrupt`) is taken once: uvicorn would read the copy as
    "press Ctrl-C again to force quit" and drop the requests in flight."""

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if sig == signal.SIGINT and repeated_interrupt():
                return
            super().handle_exit(sig, frame)

    return Server
