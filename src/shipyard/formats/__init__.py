"""One module per model format: parse it, describe its signature, summarise it.

``handler(fmt)`` returns the module for a format name; modules are imported lazily so that
inspecting an ONNX file never imports TensorFlow.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


def handler(fmt: str) -> ModuleType:
    """The module that knows ``fmt``; each has ``signature(model)`` and ``summarize(model)``."""
    from shipyard.formats.registry import get

    return importlib.import_module(get(fmt).module)


def capability(fmt: str, field: str):
    """The function ``fmt``'s registry declaration names for ``field`` (``graph_reader``,
    ``frozen``, ``quantizer``), imported now; None when the format has none. The declaration holds a
    ``"module:function"`` string so that the registry stays pure data and the features that
    use a capability keep their code."""
    from shipyard.formats.registry import get

    ref = getattr(get(fmt), field)
    if not ref:
        return None
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def model_files(path: Path, fmt: str) -> dict[str, Path] | None:
    """The files a model consists of when they are not simply its folder's ({name relative to
    the model: path}): a TF.js model's model.json and the weight files it names, checked to lie
    inside its folder. None otherwise (one file, or every file of a folder)."""
    if fmt != "tfjs":
        return None
    from shipyard.formats import tfjs
    from shipyard.model import Model

    base = path if path.is_dir() else path.parent
    json_path, doc = tfjs.model_json(Model("tfjs", path))
    files = {"model.json": json_path}
    files.update((n, tfjs.weight_file(base, n)) for names, _ in tfjs.manifest(doc, json_path) for n in names)
    return files
