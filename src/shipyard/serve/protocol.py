"""What both transports (REST and gRPC) answer, as plain data: status, metadata, inference.

Kept apart from Starlette and grpcio so each protocol's semantics are written once.
"""
from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

import numpy as np

from shipyard import __version__
from shipyard.errors import InputError, ShipyardError
from shipyard.formats import registry
from shipyard.serve import codec
from shipyard.serve.codec import kserve_datatype
from shipyard.serve.errors import AuthError, NotFoundError, UnavailableError
from shipyard.serve.manager import Manager
from shipyard.serve.servable import Servable

SERVER_NAME = "shipyard"
SERVER_VERSION = __version__
# "model_repository" is not claimed: its index is served, but load/unload are the filesystem's (hot reload)
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
# Triton's platform names by model format (what the file is); an engine other than the format's
# own (OpenVINO reading an ONNX file) is named by the engine, as Triton's backends are.
PLATFORMS = registry.platforms()  # format -> KServe/Triton platform name (formats/registry.py)
# ModelVersionStatus.State numbers in TF Serving's get_model_status.proto
TFS_STATES = {"LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "FAILED": 50}


class Frontend:
    """What REST and gRPC front ends share: the manager, metrics, the token and the size limit."""

    def __init__(self, manager: Manager, metrics, auth_token: str | None = None, max_request_bytes: int = 64 << 20):
        self.manager = manager
        self.metrics = metrics
        self.auth_token = auth_token
        self.max_request_bytes = max_request_bytes

    def limits(self, servable: Servable) -> codec.Limits:
        """What one request to ``servable`` may declare (checked before decoding anything)."""
        return codec.Limits(servable.signature, self.max_request_bytes, servable.input_names)

    def check_bearer(self, authorization: str) -> None:
        """Raise AuthError unless ``authorization`` is ``Bearer <the token>`` (constant-time compare)."""
        if self.auth_token is None:
            return
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.auth_token.encode()):
            raise AuthError("missing or wrong bearer token")

    def metric_model(self, name: str) -> str:
        return name if self.manager.has(name) else "_unknown"  # bounded metric label values


def parse_version(text: str | None) -> int | None:
    """A version number from a URL or message: ASCII decimal digits only (``str.isdigit`` and
    ``int`` also take '²', '١', '１')."""
    if text in (None, ""):
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InputError(f"version must be a non-negative integer, got {text!r}")
    return int(text)


def kserve_dims(shape) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape or ())]


def kserve_metadata(manager: Manager, name: str, version: int | None) -> dict[str, Any]:
    servable = manager.resolve(name, version)
    versions = [str(s.version) for s in manager.status(name) if s.state == "AVAILABLE"]
    sig = servable.signature
    return {
        "name": name,
        "versions": versions,
        "platform": platform(servable),
        "inputs": [{"name": s.name, "datatype": kserve_datatype(s.dtype), "shape": kserve_dims(s.shape)} for s in sig.inputs],
        "outputs": [{"name": s.name, "datatype": kserve_datatype(s.dtype), "shape": kserve_dims(s.shape)} for s in sig.outputs],
    }


def platform(servable: Servable) -> str:
    if servable.backend == "openvino":
        return "openvino"
    return PLATFORMS.get(servable.format, servable.format)


_TRITON_TYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                 "FP64", "BF16"}


def _triton_type(dtype: str) -> str:
    kind = kserve_datatype(dtype)
    return "TYPE_STRING" if kind == "BYTES" else f"TYPE_{kind}" if kind in _TRITON_TYPES else "TYPE_INVALID"


def model_config(manager: Manager, name: str, version: int | None) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto as JSON) of what this server does with
    the version: its tensors, the dynamic batcher, the version policy, the engine.

    ``max_batch_size`` > 0 (the batcher's ``max_batch_size``) only when requests are really
    merged: batching is configured above 1 and every input's first dimension is free; dims then
    leave the batch dimension out, as Triton's do. Otherwise it is 0 and dims are whole shapes.
    """
    servable = manager.resolve(name, version)
    batching = servable.config.batching
    batched = servable.batch_dim and batching.max_batch_size > 1

    def tensor(spec) -> dict[str, Any]:
        dims = kserve_dims(spec.shape)  # [] for an unknown rank, as the metadata says (Triton cannot say it)
        return {"name": spec.name, "data_type": _triton_type(spec.dtype), "dims": dims[1:] if batched else dims}

    kind, arg = servable.config.policy
    policy = ({"all": {}} if kind == "all" else {"specific": {"versions": list(arg)}} if kind == "specific"
              else {"latest": {"num_versions": arg}})
    config: dict[str, Any] = {
        "name": name, "platform": platform(servable), "backend": servable.backend, "version_policy": policy,
        "max_batch_size": batching.max_batch_size if batched else 0,
        "input": [tensor(s) for s in servable.signature.inputs],
        "output": [tensor(s) for s in servable.signature.outputs],
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": servable.config.max_concurrency}],
    }
    if batched:
        config["dynamic_batching"] = {"preferred_batch_size": list(batching.preferred_batch_sizes),
                                      "max_queue_delay_microseconds": round(batching.max_queue_delay_ms * 1000),
                                      "default_queue_policy": {"max_queue_size": batching.max_queue_size}}
    return config


def model_stats(manager: Manager, name: str | None, version: int | None) -> dict[str, Any]:
    """Triton's ``$stats_model_response``: every loaded version of ``name`` (of every model when
    ``name`` is empty), or one version. Versions not loaded have no statistics, as in Triton."""
    if not name:
        if version is not None:
            raise InputError("a version needs a model name")
        names = manager.names()
    else:
        manager.model(name)  # NotFoundError for an unknown model
        names = [name]
    out = []
    for model in names:
        try:
            states = manager.status(model, version)
        except NotFoundError:
            if name:
                raise
            continue  # removed while we looked
        for state in states:
            if state.servable is not None and state.state == "AVAILABLE":
                out.append(state.servable.stats.triton(model, state.version))
    if version is not None and not out:
        raise UnavailableError(f"model '{name}' version {version} is not loaded")
    return {"model_stats": out}


def repository_index(manager: Manager, ready_only: bool = False) -> list[dict[str, str]]:
    """Triton's repository index: every version the server knows, with its state and why."""
    out = []
    for name in manager.names():
        try:
            states = manager.status(name)
            on_disk = set(manager.model(name).on_disk)
        except NotFoundError:
            continue
        rows = {s.version: ({"AVAILABLE": "READY", "LOADING": "LOADING", "UNLOADING": "UNLOADING"}.get(s.state, "UNAVAILABLE"),
                            s.error) for s in states}
        for v in on_disk - set(rows):
            rows[v] = ("UNAVAILABLE", "not served: outside the model's version_policy")
        for v, (state, reason) in sorted(rows.items()):
            if not ready_only or state == "READY":
                out.append({"name": name, "version": str(v), "state": state, "reason": reason})
    return out


def kserve_ready(manager: Manager, name: str, version: int | None) -> bool:
    try:
        manager.resolve(name, version)
        return True
    except ShipyardError:
        return False


def tfs_status(manager: Manager, name: str, version: int | None, label: str | None) -> list[dict[str, Any]]:
    if label is not None:
        version = manager.resolve(name, label=label).version
    out = []
    for s in manager.status(name, version):
        code, message = ("OK", "") if s.state != "FAILED" else ("UNKNOWN", s.error)
        out.append({"version": str(s.version), "state": "END" if s.state == "FAILED" else s.state,
                    "status": {"error_code": code, "error_message": message}})
    return out


def tfs_signature(servable: Servable) -> dict[str, Any]:
    """The model's signatures as TF SignatureDefs (JSON form): 'serving_default' (what Predict
    runs) and a SavedModel's others (what Classify/Regress/MultiInference may name)."""
    from shipyard.serve.codec import _TF_NAMES

    def info(spec) -> dict[str, Any]:
        dims = [{"size": str(d)} for d in kserve_dims(spec.shape)]
        shape = {"dim": dims} if spec.shape is not None else {"unknown_rank": True}
        return {"dtype": _TF_NAMES.get(spec.dtype, "DT_STRING" if spec.dtype == "string" else "DT_INVALID"),
                "tensor_shape": shape, "name": spec.name}

    return {name: {"inputs": {s.name: info(s) for s in sig.inputs}, "outputs": {s.name: info(s) for s in sig.outputs},
                   "method_name": "tensorflow/serving/predict"} for name, sig in servable.signatures().items()}


def filter_outputs(outputs: Mapping[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
    if not wanted:
        return dict(outputs)
    missing = [w for w in wanted if w not in outputs]
    if missing:
        raise InputError(f"unknown output name(s): {', '.join(missing)}",
                         hint="the model's outputs are: " + ", ".join(outputs))
    return {w: outputs[w] for w in wanted}
