"""One Runner per engine; ``open_runner`` picks the engine a format runs on by default.

Engines are imported only when a runner for them is opened.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from shipyard import guard
from shipyard.errors import UnsupportedError, UsageError
from shipyard.formats import registry
from shipyard.model import Model
from shipyard.report.numbers import a as _a

BACKENDS = {
    "onnxruntime": ("shipyard.runtimes.ort", "OnnxRuntimeRunner"),
    "litert": ("shipyard.runtimes.litert", "LiteRTRunner"),
    "tensorflow": ("shipyard.runtimes.tensorflow", "TensorFlowRunner"),
    "torch": ("shipyard.runtimes.torch", "TorchScriptRunner"),
    "openvino": ("shipyard.runtimes.openvino", "OpenVINORunner"),
}
ALIASES = {"ort": "onnxruntime", "tflite": "litert", "tf": "tensorflow", "pytorch": "torch", "torchscript": "torch", "ov": "openvino"}
DEFAULT_BACKEND = registry.default_backends()  # format -> engine, from the format registry
# An engine whose runner class differs by format (torch runs TorchScript and torch.export programs).
FORMAT_RUNNERS = {("torch", "torch-export"): ("shipyard.runtimes.torch_export", "ExportedProgramRunner")}
SUPPORTED = registry.formats_by_engine()  # engine -> formats it runs


def backend_name(name: str) -> str:
    canonical = ALIASES.get(name.lower(), name.lower())
    if canonical not in BACKENDS:
        from shipyard.cliargs import did_you_mean

        raise UsageError(f"unknown backend '{name}'{did_you_mean(name.lower(), [*BACKENDS, *ALIASES])}",
                         hint=f"backends: {', '.join(BACKENDS)}")
    return canonical


def open_runner(path_or_model: str | Path | Model, backend: str | None = None, threads: int | None = None,
                intermediates: bool = False, **options):
    """A ready-to-run :class:`~shipyard.runtimes.base.Runner` (use it as a context manager).
    ``intermediates=True``: set up so that ``tensors()``/``fetch()`` return intermediate tensors
    (LiteRT then runs without delegates, which fuse tensors away)."""
    from shipyard.inspection import as_model

    model = as_model(path_or_model)
    if model.format not in DEFAULT_BACKEND:  # weights without a program (a torch checkpoint): says why
        from shipyard.formats import handler

        handler(model.format).signature(model)
        raise UnsupportedError(f"no engine runs {model.format} models")
    name = backend_name(backend) if backend else DEFAULT_BACKEND[model.format]
    if model.format not in SUPPORTED[name]:
        runs_on = ", ".join(b for b, fmts in SUPPORTED.items() if model.format in fmts)
        raise UsageError(
            f"the {name} backend cannot run {_a(model.format)} model",
            hint=f"{model.format} runs on: {runs_on}; convert it first with 'shipyard convert'",
        )
    module_name, class_name = FORMAT_RUNNERS.get((name, model.format), BACKENDS[name])
    guard.stage(f"loading {model.display} with {name}" + (" to expose intermediate tensors" if intermediates else ""))
    cls = getattr(importlib.import_module(module_name), class_name)
    if intermediates:
        from shipyard.runtimes.base import no_intermediates

        if model.format not in getattr(cls, "intermediate_formats", ()):
            raise no_intermediates(model.format, name)
        options["intermediates"] = True
    return cls(model, threads=threads, **options)
