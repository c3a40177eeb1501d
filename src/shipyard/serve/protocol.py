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
from shipyard.serve import codec
from shipyard.serve.codec import kserve_datatype
from shipyard.serve.errors import AuthError
from shipyard.serve.manager import Manager
from shipyard.serve.servable import Servable

SERVER_NAME = "shipyard"
SERVER_VERSION = __version__
EXTENSIONS = ["binary_tensor_data"]
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tflite", "tensorflow": "tensorflow_savedmodel",
             "torch": "pytorch_torchscript", "openvino": "openvino"}
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
        return codec.Limits(servable.signature, self.max_request_bytes)

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
        "platform": PLATFORMS.get(servable.backend, servable.backend),
        "inputs": [{"name": s.name, "datatype": kserve_datatype(s.dtype), "shape": kserve_dims(s.shape)} for s in sig.inputs],
        "outputs": [{"name": s.name, "datatype": kserve_datatype(s.dtype), "shape": kserve_dims(s.shape)} for s in sig.outputs],
    }


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
    """The model's signature as a TF SignatureDef (JSON form), under 'serving_default'."""
    from shipyard.serve.codec import _TF_NAMES

    def info(spec) -> dict[str, Any]:
        dims = [{"size": str(d)} for d in kserve_dims(spec.shape)]
        shape = {"dim": dims} if spec.shape is not None else {"unknown_rank": True}
        return {"dtype": _TF_NAMES.get(spec.dtype, "DT_STRING" if spec.dtype == "string" else "DT_INVALID"),
                "tensor_shape": shape, "name": spec.name}

    sig = servable.signature
    return {"serving_default": {"inputs": {s.name: info(s) for s in sig.inputs},
                                "outputs": {s.name: info(s) for s in sig.outputs},
                                "method_name": "tensorflow/serving/predict"}}


def filter_outputs(outputs: Mapping[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
    if not wanted:
        return dict(outputs)
    missing = [w for w in wanted if w not in outputs]
    if missing:
        raise InputError(f"unknown output name(s): {', '.join(missing)}",
                         hint="the model's outputs are: " + ", ".join(outputs))
    return {w: outputs[w] for w in wanted}
