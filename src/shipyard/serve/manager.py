"""Versions aspired by the repository -> loaded servables, swapped without losing availability.

The TF Serving idea (Source -> Loader -> AspiredVersionsManager) without the ceremony: each
``sync`` compares what the repository wants with what is loaded, loads new versions on
background threads (requests to every model keep flowing), publishes a version only once it
has loaded, and retires a version only when something else can serve: it stops taking new
requests, finishes the ones it has (drain), then releases the engine. A version that fails to
load is recorded with its error and the previous one keeps serving; it is tried again when
its files change.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.errors import ShipyardError
from shipyard.serve.errors import NotFoundError, UnavailableError, without_paths
from shipyard.serve.metrics import Metrics
from shipyard.serve.repository import ModelConfig, ModelOnDisk, VersionOnDisk, scan
from shipyard.serve.servable import Servable

log = logging.getLogger("shipyard.serve")


@dataclass
class VersionState:
    version: int
    state: str                      # LOADING | AVAILABLE | FAILED | UNLOADING
    fingerprint: tuple
    error: str = ""
    servable: Servable | None = None
    pending: tuple | None = None    # fingerprint of new files being loaded for this version


@dataclass
class ManagedModel:
    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    config_error: str = ""
    versions: dict[int, VersionState] = field(default_factory=dict)
    on_disk: dict[int, VersionOnDisk] = field(default_factory=dict)
    removed: bool = False


class Manager:
    def __init__(self, repo: Path, metrics: Metrics | None = None, default_threads: int | None = None,
                 load_workers: int = 2, share_weights: bool = False):
        self.repo = Path(repo)
        self.metrics = metrics or Metrics()
        self.default_threads = default_threads
        self.share_weights = share_weights
        self._models: dict[str, ManagedModel] = {}
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._loaders = ThreadPoolExecutor(max_workers=load_workers, thread_name_prefix="loader")
        self._unloaders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="unloader")
        self._closed = False
        self._ignored: set[str] = set()  # directories scan() has reported as not a version (logged once)

    # -- reconcile ------------------------------------------------------------------------

    def sync(self) -> None:
        """Bring loaded versions in line with the repository (called by the watcher)."""
        with self._sync_lock:
            on_disk = scan(self.repo, self._ignored)
            with self._lock:
                if self._closed:
                    return
                for name, disk in on_disk.items():
                    self._update(self._models.setdefault(name, ManagedModel(name)), disk)
                for name, model in list(self._models.items()):
                    if name not in on_disk:
                        model.removed = True
                        model.on_disk = {}
                        self._reconcile(model)

    def _update(self, model: ManagedModel, disk: ModelOnDisk) -> None:
        model.removed = False
        model.on_disk = disk.versions
        if disk.config_error:
            model.config_error = disk.config_error  # keep serving with the last good config
        else:
            model.config_error = ""
            model.config = disk.config
        self._reconcile(model)

    def _aspired(self, model: ManagedModel) -> list[int]:
        usable = [v for v, d in model.on_disk.items()
                  if not (v in model.versions and model.versions[v].state == "FAILED"
                          and model.versions[v].fingerprint == d.fingerprint)]
        return model.config.aspired(usable)

    def _reconcile(self, model: ManagedModel) -> None:
        aspired = self._aspired(model)
        for v in aspired:
            disk = model.on_disk[v]
            state = model.versions.get(v)
            if state is None or (state.state == "FAILED" and state.fingerprint != disk.fingerprint):
                model.versions[v] = VersionState(v, "LOADING", disk.fingerprint)
                self._loaders.submit(self._load, model.name, disk, model.config)
            elif state.state == "AVAILABLE" and disk.fingerprint not in (state.fingerprint, state.pending):
                state.pending = disk.fingerprint  # files replaced in place: load them, then swap
                self._loaders.submit(self._load, model.name, disk, model.config)
        loading = any(model.versions[v].state == "LOADING" for v in aspired if v in model.versions)
        serving = any(model.versions[v].state == "AVAILABLE" for v in aspired if v in model.versions)
        for v, state in list(model.versions.items()):
            if v in aspired:
                continue
            if state.state == "FAILED":
                if v not in model.on_disk:
                    del model.versions[v]
                continue
            if state.state != "AVAILABLE":
                continue
            # Availability first: retire only when an aspired version serves and none is still loading,
            # unless the whole model (or every aspired version) is gone.
            if model.removed or not aspired or (serving and not loading):
                self._retire(model, state)
        if model.removed and not model.versions:
            self._models.pop(model.name, None)
        self.metrics.loaded.labels(model.name).set(sum(s.state == "AVAILABLE" for s in model.versions.values()))

    def _load(self, name: str, disk: VersionOnDisk, config: ModelConfig) -> None:
        start = time.perf_counter()
        try:
            servable = Servable(name, disk.version, disk.path, config, self.default_threads,
                                on_batch=functools.partial(self.metrics.observe_batch, name),  # no frames between
                                share_weights=self.share_weights)
            error = ""
        except ShipyardError as exc:
            servable, error = None, exc.message
        except Exception as exc:  # noqa: BLE001 - an engine's own exception type while loading: report, keep serving others
            servable, error = None, f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        # what clients see (model status, 503s) names the version, not where the repository lives
        public = without_paths(error, self.repo / name / str(disk.version), f"{name}/{disk.version}")
        with self._lock:
            model = self._models.get(name)
            current = model.versions.get(disk.version) if model else None
            if model is None or self._closed or disk.version not in model.on_disk:
                if servable is not None:
                    self._unloaders.submit(servable.close)
                return
            if servable is None and current is not None and current.state == "AVAILABLE":
                current.pending = None  # a failed in-place reload: the loaded files keep serving
                current.error = public
                current.fingerprint = disk.fingerprint
                self.metrics.load_failures.labels(name).inc()
                log.warning("model %s version %s: new files failed to load: %s", name, disk.version, error)
            elif servable is None:
                model.versions[disk.version] = VersionState(disk.version, "FAILED", disk.fingerprint, public)
                self.metrics.load_failures.labels(name).inc()
                log.warning("model %s version %s failed to load: %s", name, disk.version, error)
            else:
                old = current.servable if current is not None else None
                model.versions[disk.version] = VersionState(disk.version, "AVAILABLE", disk.fingerprint, "", servable)
                if old is not None:  # the same version number, new files: swap, then drain the old
                    self._unloaders.submit(old.close)
                log.info("model %s version %s is live (%s, %.0f ms)", name, disk.version, servable.backend,
                         (time.perf_counter() - start) * 1e3)
            self._reconcile(model)

    def _retire(self, model: ManagedModel, state: VersionState) -> None:
        state.state = "UNLOADING"
        servable = state.servable

        def unload() -> None:
            if servable is not None:
                servable.close()  # drains: queued requests finish on this version
            with self._lock:
                if model.versions.get(state.version) is state:
                    del model.versions[state.version]
                if model.removed and not model.versions:
                    self._models.pop(model.name, None)
            log.info("model %s version %s unloaded", model.name, state.version)

        self._unloaders.submit(unload)

    # -- lookups (request path: a dict lookup under a short lock) -----------------------

    def names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, m in self._models.items() if not m.removed)

    def has(self, name: str) -> bool:
        model = self._models.get(name)  # a single dict read: atomic, no lock needed
        return model is not None and not model.removed

    def model(self, name: str) -> ManagedModel:
        with self._lock:
            model = self._models.get(name)
            if model is None or model.removed:
                raise NotFoundError(f"model '{name}' is not in the repository")
            return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            model = self._models.get(name)  # model(name), without taking the lock twice
            if model is None or model.removed:
                raise NotFoundError(f"model '{name}' is not in the repository")
            if label is not None:
                if label not in model.config.labels:
                    raise NotFoundError(f"model '{name}' has no label '{label}'",
                                        hint=f"labels: {', '.join(sorted(model.config.labels)) or 'none'}")
                version = model.config.labels[label]
            if version is not None:
                state = model.versions.get(version)
                if state is None:
                    raise NotFoundError(f"model '{name}' has no version {version}")
                if state.state != "AVAILABLE":
                    raise UnavailableError(f"model '{name}' version {version} is {state.state.lower()}"
                                           + (f": {state.error}" if state.error else ""))
                return state.servable
            best = None  # the newest version serving (every request without a version: no list, no lambda)
            for s in model.versions.values():
                if s.state == "AVAILABLE" and (best is None or s.version > best.version):
                    best = s
            if best is None:
                errors = [f"version {s.version}: {s.error}" for s in model.versions.values() if s.error]
                raise UnavailableError(f"model '{name}' has no version ready to serve"
                                       + (f" ({'; '.join(errors)})" if errors else ""))
            return best.servable

    def submit(self, name: str, feeds, version: int | None = None, label: str | None = None,
               resolved: Servable | None = None) -> tuple[Servable, Future]:
        """Queue one request on the right version; a version that starts draining between the
        lookup and the queueing sends the request to its successor instead. ``resolved``: what
        the caller's own ``resolve(name, version, label)`` returned (it checked the request
        against that version's signature), tried first."""
        for _ in range(5):
            servable, resolved = resolved or self.resolve(name, version, label), None
            try:
                return servable, servable.submit(feeds)
            except UnavailableError:
                if version is not None or label is not None:
                    raise
                time.sleep(0.001)
        raise UnavailableError(f"model '{name}' is being swapped; retry")

    def status(self, name: str, version: int | None = None) -> list[VersionState]:
        with self._lock:
            model = self.model(name)
            states = sorted(model.versions.values(), key=lambda s: s.version)
            if version is not None:
                states = [s for s in states if s.version == version]
                if not states:
                    raise NotFoundError(f"model '{name}' has no version {version}")
            return [VersionState(s.version, s.state, s.fingerprint, s.error, s.servable) for s in states]

    def ready(self) -> bool:
        """Every model has settled (nothing loading) and each has a version serving."""
        with self._lock:
            models = [m for m in self._models.values() if not m.removed]
            return all(any(s.state == "AVAILABLE" for s in m.versions.values())
                       and not any(s.state == "LOADING" for s in m.versions.values()) for m in models)

    def settled(self) -> bool:
        with self._lock:
            return not any(s.state in ("LOADING", "UNLOADING") for m in self._models.values() for s in m.versions.values())

    def shutdown(self) -> None:
        """Finish in-flight requests on every version, then release every engine."""
        with self._lock:
            self._closed = True
            servables = [s.servable for m in self._models.values() for s in m.versions.values() if s.servable]
        self._loaders.shutdown(wait=True, cancel_futures=True)
        for servable in servables:
            servable.close()
        self._unloaders.shutdown(wait=True)
