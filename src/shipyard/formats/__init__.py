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
    the model: path}): a TF.js model's model.json and the weight files it names, an OpenVINO IR's
    .xml and .bin (the registry's ``files``). None otherwise (one file, or every file of a folder)."""
    files = capability(fmt, "files")
    return None if files is None else files(path)


def files_of(path: Path, fmt: str | None = None) -> list[Path]:
    """Every file of a model, in a stable order: a folder's, the several of a format made of more
    than one (an OpenVINO IR's .xml and .bin), else the one file. Sizes and digests count these."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    several = model_files(path, fmt) if fmt else None
    return [p for p in several.values() if p.is_file()] if several else [path]


def copy_model(model, out: Path) -> None:
    """The files of ``model`` (a ``Model``) at ``out``, each replaced atomically: the others (an
    IR's .bin) beside ``out`` with their own suffixes, first, and ``out`` itself, the file a reader
    opens, last, so that it never names weights that are not there yet."""
    import shutil
    from contextlib import ExitStack

    from shipyard.atomic import atomic_path

    sources = files_of(model.path, model.format)
    with ExitStack() as stack:  # entered first, replaced last
        for src in sorted(sources, key=lambda p: p != model.path):
            target = out if src == model.path else out.with_suffix(src.suffix)
            shutil.copyfile(src, stack.enter_context(atomic_path(target)))
