"""The model repository on disk: ``REPO/<model>/<version>/<model file or dir>`` + config.

Laid out as TF Serving and Triton lay theirs out. An optional ``REPO/<model>/config.json``
says which versions to serve (``version_policy``), names versions (``labels``), and sets
``backend``, ``threads``, ``max_concurrency`` and ``batching``. Model names that come from a
request are only ever looked up in the manager's table, never joined onto a path; names found
on disk are checked with :func:`valid_model_name` as well.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import UsageError

CONFIG_FILE = "config.json"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII decimal only: str.isdigit() and int() also take '²', '١', '１'
log = logging.getLogger("shipyard.serve")


def valid_model_name(name: str) -> bool:
    """A plain name: letters, digits, ``_ . -``; no slashes, no leading dot, never ``..``."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


def valid_version_name(name: str) -> bool:
    """A version directory: 1 to 18 ASCII decimal digits (fits TF Serving's int64 versions)."""
    return bool(_VERSION.fullmatch(name))


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 1          # 1 = no dynamic batching
    max_queue_delay_ms: float = 0.0  # how long a partial batch waits for more requests
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256        # requests waiting beyond this get 429 / RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class ModelConfig:
    policy: tuple[str, Any] = ("latest", 1)   # ("latest", n) | ("all", None) | ("specific", (v, ..))
    labels: dict[str, int] = field(default_factory=dict)
    backend: str | None = None
    threads: int | None = None
    max_concurrency: int = 1                  # engine calls in flight at once, per version
    batching: BatchingConfig = BatchingConfig()
    precision: str | None = None              # OpenVINO: "fp32" (default) or "bf16" (what ship --optimize chose)

    def aspired(self, versions: list[int]) -> list[int]:
        """The versions this policy wants served, out of those that can be served."""
        kind, arg = self.policy
        ordered = sorted(versions)
        if kind == "all":
            return ordered
        if kind == "specific":
            return [v for v in ordered if v in arg]
        return ordered[-arg:] if arg > 0 else []


def parse_config(data: dict[str, Any], where: str) -> ModelConfig:
    """Validate a config dict; a bad one raises :class:`UsageError` naming the file and key."""
    def bad(msg: str) -> UsageError:
        return UsageError(f"{where}: {msg}", hint="see docs/serve.md for the config keys")

    known = {"version_policy", "labels", "backend", "threads", "max_concurrency", "batching", "precision"}
    unknown = set(data) - known
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}")
    policy: tuple[str, Any] = ("latest", 1)
    vp = data.get("version_policy")
    if vp is not None:
        if vp == "all" or vp == {"all": {}}:
            policy = ("all", None)
        elif isinstance(vp, dict) and isinstance(vp.get("latest"), int) and vp["latest"] > 0:
            policy = ("latest", vp["latest"])
        elif isinstance(vp, dict) and isinstance(vp.get("specific"), list) and all(isinstance(v, int) for v in vp["specific"]):
            policy = ("specific", tuple(vp["specific"]))
        else:
            raise bad('version_policy must be "all", {"latest": N} or {"specific": [versions]}')
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, int) and isinstance(k, str) for k, v in labels.items()):
        raise bad('labels must map a label to a version number, e.g. {"stable": 1, "canary": 2}')
    b = data.get("batching", {})
    if not isinstance(b, dict) or set(b) - {"max_batch_size", "max_queue_delay_ms", "preferred_batch_sizes", "max_queue_size"}:
        raise bad("batching takes max_batch_size, max_queue_delay_ms, preferred_batch_sizes, max_queue_size")
    try:
        batching = BatchingConfig(
            max_batch_size=int(b.get("max_batch_size", 1)),
            max_queue_delay_ms=float(b.get("max_queue_delay_ms", 0.0)),
            preferred_batch_sizes=tuple(sorted(int(s) for s in b.get("preferred_batch_sizes", ()))),
            max_queue_size=int(b.get("max_queue_size", 256)),
        )
        threads = None if data.get("threads") is None else int(data["threads"])
        concurrency = int(data.get("max_concurrency", 1))
    except (TypeError, ValueError) as exc:
        raise bad(f"a number was expected ({exc})") from None
    if batching.max_batch_size < 1 or batching.max_queue_size < 1 or batching.max_queue_delay_ms < 0 or concurrency < 1:
        raise bad("batch sizes, queue size and max_concurrency must be positive, delays non-negative")
    backend = data.get("backend")
    if backend is not None:
        from shipyard.runtimes import backend_name

        backend = backend_name(str(backend))
    precision = data.get("precision")
    if precision is not None and (backend != "openvino" or precision not in ("fp32", "bf16")):
        raise bad('precision ("fp32" or "bf16") applies to "backend": "openvino" only')
    return ModelConfig(policy, dict(labels), backend, threads, concurrency, batching, precision)


def load_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the config must be a JSON object")
    return parse_config(data, str(path))


@dataclass(frozen=True)
class VersionOnDisk:
    version: int
    path: Path               # the model file or directory inside the version directory
    fingerprint: tuple       # (names, sizes, mtimes): a change means "load it again"


@dataclass
class ModelOnDisk:
    name: str
    directory: Path
    config: ModelConfig | None
    config_error: str | None
    versions: dict[int, VersionOnDisk]


def model_path(version_dir: Path) -> Path | None:
    """The model inside a version directory: the directory itself when it is a SavedModel,
    else its only entry (a file, or a directory such as a TF.js model)."""
    if (version_dir / "saved_model.pb").exists() or (version_dir / "saved_model.pbtxt").exists():
        return version_dir
    entries = sorted(p for p in version_dir.iterdir() if not p.name.startswith("."))
    if not entries:
        return None
    if len(entries) == 1:
        return entries[0]
    # Several files (an ONNX model with external data, a model plus notes): take the model file.
    from shipyard.formats import registry

    for suffix in registry.model_file_suffixes():
        for entry in entries:
            if entry.name.endswith(suffix):
                return entry
    return entries[0]


def _fingerprint(path: Path) -> tuple:
    items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for item in items:
        st = item.stat()
        out.append((str(item), st.st_size, st.st_mtime_ns))
    return tuple(out)


def scan(repo: Path, ignored: set[str] | None = None) -> dict[str, ModelOnDisk]:
    """Everything servable under ``repo`` right now (files may vanish while we look: skip them).

    A directory inside a model that is not a version number (``²``, ``v2``) is skipped and
    logged once: ``ignored`` remembers which were reported (the caller keeps it across scans).
    """
    models: dict[str, ModelOnDisk] = {}
    try:
        model_dirs = sorted(p for p in repo.iterdir() if p.is_dir())
    except OSError:
        return models
    for model_dir in model_dirs:
        if not valid_model_name(model_dir.name):
            continue
        try:
            config, error = load_config(model_dir), None
        except UsageError as exc:
            config, error = None, exc.message
        versions: dict[int, VersionOnDisk] = {}
        try:
            version_dirs = [p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            continue
        for vdir in [p for p in version_dirs if not valid_version_name(p.name)]:
            version_dirs.remove(vdir)
            if ignored is not None and str(vdir) not in ignored:
                ignored.add(str(vdir))
                log.warning("ignoring %s (not a version: versions are named by 1 to 18 ASCII digits 0-9)", vdir)
        for vdir in version_dirs:
            try:
                path = model_path(vdir)
                if path is not None:
                    versions[int(vdir.name)] = VersionOnDisk(int(vdir.name), path, _fingerprint(path))
            except OSError:
                continue
        models[model_dir.name] = ModelOnDisk(model_dir.name, model_dir, config, error, versions)
    return models
