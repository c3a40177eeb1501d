"""shipyard: take a trained neural network from training to deployment.

The public API is small: :func:`open_model` sniffs a file by content, :func:`inspect`
summarises it, :func:`open_runner` runs it on a chosen engine. Heavy frameworks are
imported only by the functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

from shipyard.errors import ShipyardError
from shipyard.model import Model, Signature, TensorSpec

__all__ = [
    "Model",
    "ShipyardError",
    "Signature",
    "TensorSpec",
    "__version__",
    "inspect",
    "open_model",
    "open_runner",
]


def open_model(path):
    """Recognise a model file by its content (see :mod:`shipyard.sniff`)."""
    from shipyard.sniff import open_model as _open

    return _open(path)


def inspect(path_or_model, **kwargs):
    """Summarise a model file (see :mod:`shipyard.inspection`)."""
    from shipyard.inspection import inspect_model

    return inspect_model(path_or_model, **kwargs)


def open_runner(path_or_model, backend: str | None = None, threads: int | None = None):
    """Open a :class:`~shipyard.runtimes.base.Runner` for a model (see :mod:`shipyard.runtimes`)."""
    from shipyard.runtimes import open_runner as _open

    return _open(path_or_model, backend=backend, threads=threads)
