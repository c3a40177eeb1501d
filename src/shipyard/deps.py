"""Lazy imports of optional, heavy frameworks with a one-line message when missing."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from types import ModuleType

from shipyard.errors import MissingDependencyError

# module -> (pip package, shipyard extra)
_KNOWN = {
    "tensorflow": ("tensorflow-cpu", "tf"),
    "tf2onnx": ("tf2onnx", "tf"),
    "keras": ("tensorflow-cpu", "tf"),
    "torch": ("torch", "torch"),
    "ai_edge_litert": ("ai-edge-litert", "tflite"),
    "onnxruntime": ("onnxruntime", "all"),
    "onnxslim": ("onnxslim", "onnx-tools"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
}


def quiet_tensorflow_logs() -> None:
    """Keep TensorFlow's C++ start-up chatter off the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    if module in ("tensorflow", "keras", "tf2onnx"):
        quiet_tensorflow_logs()
    try:
        if module in ("tensorflow", "keras", "tf2onnx") and "tensorflow" not in sys.modules:
            with native_output_silenced():  # TF's C++ start-up banner ignores TF_CPP_MIN_LOG_LEVEL
                imported = importlib.import_module(module)
        else:
            imported = importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = _KNOWN.get(top, (top, "all"))
        if exc.name and exc.name.split(".")[0] != top:
            # The package is there but one of *its* dependencies is broken: say so.
            raise MissingDependencyError(exc.name, extra, f"{purpose} (via {module})") from exc
        raise MissingDependencyError(package, extra, purpose) from exc
    if module in ("tensorflow", "tf2onnx"):
        _quiet_python_loggers()
    return imported


@contextlib.contextmanager
def native_output_silenced(*fds: int):
    """Point file descriptors (default stderr) at /dev/null for the duration: native libraries
    print banners and graph dumps straight to the descriptors; Python exceptions still propagate."""
    fds = fds or (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


@contextlib.contextmanager
def all_output_silenced():
    """Python's stdout/stderr and the native descriptors 1 and 2, for calls such as the TFLite
    converter that print from both sides (settings, MLIR dumps, delegate notices)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), native_output_silenced(1, 2):
        yield


def _quiet_python_loggers() -> None:
    """TF and tf2onnx log deprecation notices through Python logging; users need none of them."""
    import logging

    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
