"""`shipyard serve REPO --ray`: each repository model as a Ray Serve deployment behind Ray
Serve's HTTP proxy, answering the KServe v2 REST API exactly as `shipyard serve` does.

Nothing of the protocol is rewritten here: each replica holds the ordinary serving stack for
its one model (a :class:`~shipyard.serve.manager.Manager` that loads the model's aspired
versions, each a Servable = one runner behind its batcher) and hands every request to the
same :class:`~shipyard.serve.rest.RestAPI` handlers `shipyard serve` uses (decoding, limits,
binary tensors, errors, bearer token). Ray Serve contributes the replicas, the routing between
them, autoscaling and rolling updates.

Per model, ``REPO/<model>/ray.json`` (optional) holds Ray Serve options: ``num_replicas`` or
``autoscaling_config`` (``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ...),
``max_ongoing_requests`` and ``num_cpus`` per replica. Hot reload: the driver polls the
repository; when a model's files or config change it redeploys that model with the new
fingerprint, and Ray Serve rolls the replicas over to the new version.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shipyard.errors import UsageError

log = logging.getLogger("shipyard.serve")
RAY_CONFIG = "ray.json"
_RAY_KEYS = {"num_replicas", "autoscaling_config", "max_ongoing_requests", "num_cpus"}
DEFAULT_MAX_ONGOING = 64  # Ray Serve's default of 5 collapses under concurrency 32 (FACTS.md)
REPLICA_HEADER = "shipyard-replica"


def ray_options(model_dir: Path, replicas: int | None) -> dict[str, Any]:
    """Deployment options for one model: ray.json if present, ``--replicas`` otherwise (it wins
    over a fixed num_replicas, not over an autoscaling config)."""
    options: dict[str, Any] = {}
    path = model_dir / RAY_CONFIG
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(data, dict) or set(data) - _RAY_KEYS:
            raise UsageError(f"{path}: expected an object with {', '.join(sorted(_RAY_KEYS))}")
        if "num_replicas" in data and "autoscaling_config" in data:
            raise UsageError(f"{path}: give num_replicas or autoscaling_config, not both")
        options.update(data)
    if "autoscaling_config" not in options:
        options["num_replicas"] = replicas if replicas is not None else options.get("num_replicas", 1)
    return {"max_ongoing_requests": options.pop("max_ongoing_requests", DEFAULT_MAX_ONGOING),
            "ray_actor_options": {"num_cpus": float(options.pop("num_cpus", 1))}, **options}


def fingerprint(model_dir: Path, versions: dict) -> str:
    """What a replica serves, in one digest: version files (names, sizes, times) and configs."""
    h = hashlib.sha256()
    for v in sorted(versions):
        h.update(repr(versions[v].fingerprint).encode())
    for name in ("config.json", RAY_CONFIG):
        p = model_dir / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class ModelReplica:
    """One Ray Serve replica: the model's versions loaded once, the REST handlers of `serve`."""

    def __init__(self, repo: str, name: str, version_tag: str, auth_token: str | None, max_request_bytes: int,
                 threads: int | None):
        from shipyard.serve.metrics import Metrics
        from shipyard.serve.rest import RestAPI

        self.name = name
        self.version_tag = version_tag
        self.manager = _OneModelManager(Path(repo), name, default_threads=threads)
        self.manager.sync()
        deadline = time.monotonic() + 600
        while not self.manager.settled() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.manager.ready():  # a replica that cannot serve is reported unhealthy to Ray Serve
            errors = [s.error for s in self.manager.status(name) if s.error]
            raise RuntimeError(f"model '{name}' did not load: {'; '.join(errors) or 'no version'}")
        self.api = RestAPI(self.manager, Metrics(), auth_token, max_request_bytes)
        self.where = f"{os.uname().nodename}:{os.getpid()}"

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.scope.get("path", "")
        prefix = "/v2/models/"
        if not path.startswith(prefix):  # the proxy strips nothing: the full path comes through
            path = request.scope.get("root_path", "") + path
        if not path.startswith(prefix):
            return JSONResponse({"error": f"no such endpoint: {request.method} {path}"}, status_code=404)
        request.scope["path_params"] = {"rest": path[len(prefix):]}
        response = await self.api.kserve(request)
        response.headers[REPLICA_HEADER] = self.where
        return response

    def check_health(self) -> None:
        if not self.manager.ready():
            raise RuntimeError(f"model '{self.name}' has no version serving")


class ServerInfo:
    """``/v2``, ``/v2/health/live`` and ``/v2/health/ready`` for the whole repository."""

    def __init__(self, models: list[str]):
        self.models = models

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        from shipyard.serve import protocol

        path = request.scope.get("path", "")
        if not path.startswith("/v2"):  # in case a proxy passes the path below the route prefix
            path = request.scope.get("root_path", "") + path
        if path.rstrip("/") == "/v2":
            return JSONResponse({"name": protocol.SERVER_NAME, "version": protocol.SERVER_VERSION,
                                 "extensions": protocol.EXTENSIONS})
        if path == "/v2/health/live":
            return JSONResponse({"live": True})
        if path == "/v2/health/ready":
            from ray import serve

            statuses = serve.status().applications
            ok = all(statuses.get(m) is not None and statuses[m].status == "RUNNING" for m in self.models)
            return JSONResponse({"ready": ok}, status_code=200 if ok else 503)
        if path.startswith("/v2/models/"):  # a model with no deployment of its own
            name = path[len("/v2/models/"):].split("/")[0]
            return JSONResponse({"error": f"model '{name}' is not in the repository"}, status_code=404)
        return JSONResponse({"error": f"no such endpoint: {request.method} {path}"}, status_code=404)


def _one_model_manager_class():
    from shipyard.serve.manager import ManagedModel, Manager
    from shipyard.serve.repository import scan

    class OneModelManager(Manager):
        """The serve Manager restricted to one model of the repository (a replica serves one)."""

        def __init__(self, repo: Path, name: str, **kwargs):
            super().__init__(repo, **kwargs)
            self.only = name

        def sync(self) -> None:
            with self._sync_lock:
                on_disk = {n: d for n, d in scan(self.repo, self._ignored).items() if n == self.only}
                with self._lock:
                    for name, disk in on_disk.items():
                        self._update(self._models.setdefault(name, ManagedModel(name)), disk)

    return OneModelManager


def _OneModelManager(repo: Path, name: str, **kwargs):  # a class made on first use: serve imports lazily
    return _one_model_manager_class()(repo, name, **kwargs)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_ray(repo: Path, address: str | None, replicas: int | None, host: str, rest_port: int,
              auth_token: str | None, max_request_bytes: int, threads: int | None, poll_seconds: float,
              ready_file: Path | None) -> int:
    """Deploy every model, write --ready-file, redeploy what changes, tear down on SIGTERM/SIGINT."""
    from shipyard import ray_connect
    from shipyard.serve.repository import scan

    if not repo.is_dir():
        raise UsageError(f"the model repository {repo} is not a directory",
                         hint="lay it out as REPO/<model>/<version>/<model file>")
    if replicas is not None and replicas < 1:
        raise UsageError("--replicas must be at least 1")
    models = {n: m for n, m in scan(repo).items() if m.versions}
    if not models:
        raise UsageError(f"{repo}: no model with a version to serve")
    options = {n: ray_options(m.directory, replicas) for n, m in models.items()}
    ray_connect.preflight(address)
    port = rest_port or _free_port(host)
    cpus = sum(int(o.get("num_replicas") or o.get("autoscaling_config", {}).get("max_replicas", 1)) for o in options.values())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its own notices on stdout
        ray_connect.init(address, cpus + 1, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
        from ray import serve

        serve.start(http_options={"host": host, "port": port})
        deployed: dict[str, str] = {}
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        try:
            for name, model in models.items():
                deployed[name] = _deploy(serve, repo, name, model, options[name], auth_token, max_request_bytes, threads)
            serve.run(serve.deployment(ServerInfo, name="server", num_replicas=1,
                                       ray_actor_options={"num_cpus": 0}).bind(sorted(models)),
                      name="shipyard-server", route_prefix="/v2")
            info = {"rest_port": port, "grpc_port": None, "host": host, "ray": address or "local",
                    "models": {n: options[n] for n in models}}
            log.info(json.dumps({"event": "listening", **info}))
            if ready_file is not None:
                tmp = ready_file.with_name(ready_file.name + ".tmp")
                tmp.write_text(json.dumps(info))
                tmp.replace(ready_file)
            while not stop.wait(poll_seconds):
                _redeploy_changed(serve, repo, deployed, replicas, auth_token, max_request_bytes, threads)
        finally:
            # On a cluster of its own, remove this server's applications (their replicas drain). A
            # local Ray goes down with ray.shutdown(): a Ctrl-C reaches its daemons too, so Serve
            # calls that wait on them could hang.
            for name in (list(deployed) + ["shipyard-server"]) if address else []:
                try:
                    serve.delete(name)
                except Exception as exc:  # noqa: BLE001 - shutting down: the cluster may be gone already
                    log.warning("could not delete the Ray Serve application %s: %s", name, exc)
            import ray

            ray.shutdown()
            log.info(json.dumps({"event": "stopped"}))
    return 0


def _deploy(serve, repo: Path, name: str, model, options: dict[str, Any], auth_token: str | None,
            max_request_bytes: int, threads: int | None) -> str:
    tag = fingerprint(model.directory, model.versions)
    try:
        app = serve.deployment(ModelReplica, name=name, **options).bind(
            str(repo), name, tag, auth_token, max_request_bytes, threads)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"{model.directory / RAY_CONFIG}: Ray Serve refused the options ({first})") from None
    serve.run(app, name=name, route_prefix=f"/v2/models/{name}")
    log.info(json.dumps({"event": "deployed", "model": name, "fingerprint": tag, **options}))
    return tag


def _redeploy_changed(serve, repo: Path, deployed: dict[str, str], replicas: int | None, auth_token: str | None,
                      max_request_bytes: int, threads: int | None) -> None:
    """A model whose files or configs changed becomes a new deployment version (rolled out by
    Ray Serve: new replicas load it, old ones drain); a new model is deployed, a removed one deleted."""
    from shipyard.serve.repository import scan

    current = {n: m for n, m in scan(repo).items() if m.versions}
    for name, model in current.items():
        if deployed.get(name) != fingerprint(model.directory, model.versions):
            try:
                deployed[name] = _deploy(serve, repo, name, model, ray_options(model.directory, replicas), auth_token,
                                         max_request_bytes, threads)
            except UsageError as exc:
                log.warning("model %s: not redeployed: %s", name, exc.message)
    for name in [n for n in deployed if n not in current]:
        serve.delete(name)
        deployed.pop(name)
        log.info(json.dumps({"event": "deleted", "model": name}))
