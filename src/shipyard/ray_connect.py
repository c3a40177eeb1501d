"""Joining or starting Ray, shared by `batch --ray` and `serve --ray`: the environment Ray needs
here (no auth token for a local cluster, no usage reporting), a reachability check that fails
in seconds where ``ray.init`` would retry for minutes, and quiet logging."""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

from shipyard.errors import MissingDependencyError, UsageError

CONNECT_TIMEOUT_S = 5.0


def _ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster without a token (FACTS.md)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # core-worker notices on stderr; errors still raise
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "--ray") from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing answers at (ray.init would retry for minutes)."""
    if address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        raise UsageError(f"--ray {address}: Ray Client addresses are not supported; give the head's HOST:PORT (GCS)")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray {address}: expected HOST:PORT of the cluster's head (its GCS port, 6379 by default)")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise UsageError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})",
                         hint="start one with 'ray start --head', or leave the address out for a local Ray") from None


def preflight(address: str | None) -> None:
    _ray()
    if address:
        check_reachable(address)


def init(address: str | None, cpus: int, **extra: Any) -> Any:
    """Connect to ``address``, or start a local Ray with ``cpus`` CPUs for the actors."""
    ray = _ray()
    if address:
        check_reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                              "ignore_reinit_error": True}
    if address:
        kwargs["address"] = address
    else:  # local: CPUs for the actors, a small object store (the rows are shard paths, not tensors)
        kwargs.update(num_cpus=max(cpus, 1), object_store_memory=128 << 20)
    kwargs.update(extra)
    for name in ("ray", "ray.data", "ray._private", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--ray {address or ''}: could not start or join Ray ({str(exc).splitlines()[0][:200]})") from None
    return ray
