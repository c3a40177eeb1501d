"""Serving errors, each mapped to one HTTP status and one gRPC code (see ``STATUS``)."""
from __future__ import annotations

from shipyard.errors import InputError, ShipyardError


class NotFoundError(ShipyardError):
    """No such model, version or label."""


class UnavailableError(ShipyardError):
    """The model exists but no version of it can serve right now (loading, failed, draining)."""


class QueueFullError(ShipyardError):
    """The model's request queue is full: the client should back off and retry."""


class AuthError(ShipyardError):
    """A missing or wrong bearer token."""


class TooLargeError(ShipyardError):
    """A request body above the server's limit."""


class ClientGoneError(ShipyardError):
    """The client went away before its request was read (a client problem: no traceback, no 500)."""


class EngineError(ShipyardError):
    """The engine rejected inputs that passed the signature check (a data-dependent problem)."""


# error class -> (HTTP status, gRPC status code name)
STATUS: dict[type, tuple[int, str]] = {
    InputError: (400, "INVALID_ARGUMENT"),
    EngineError: (400, "INVALID_ARGUMENT"),
    NotFoundError: (404, "NOT_FOUND"),
    UnavailableError: (503, "UNAVAILABLE"),
    QueueFullError: (429, "RESOURCE_EXHAUSTED"),
    AuthError: (401, "UNAUTHENTICATED"),
    TooLargeError: (413, "RESOURCE_EXHAUSTED"),
    ClientGoneError: (499, "CANCELLED"),  # nginx's "client closed request"; nobody reads the answer
}


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    if isinstance(exc, ShipyardError):
        return 400, "INVALID_ARGUMENT"
    return 500, "INTERNAL"


def without_paths(text: str, version_dir, public: str) -> str:
    """``text`` with the server's directory of one model version (as given and resolved)
    replaced by its public name ``model/version``: engines and loaders name the files they
    read, and where the repository lives is not the client's business."""
    for prefix in sorted({str(version_dir), str(version_dir.resolve())}, key=len, reverse=True):
        text = text.replace(prefix, public)
    return text
