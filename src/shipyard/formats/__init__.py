"""One module per model format: parse it, describe its signature, summarise it.

``handler(fmt)`` returns the module for a format name; modules are imported lazily so that
inspecting an ONNX file never imports TensorFlow.
"""
from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "onnx": "shipyard.formats.onnx",
    "tflite": "shipyard.formats.tflite",
    "tf-graphdef": "shipyard.formats.tf_graph",
    "tf-checkpoint": "shipyard.formats.tf_checkpoint",
    "tf-savedmodel": "shipyard.formats.tf_saved",
    "keras": "shipyard.formats.keras",
    "torchscript": "shipyard.formats.torchscript",
    "tfjs": "shipyard.formats.tfjs",
    "torch-checkpoint": "shipyard.formats.torch_checkpoint",
    "torch-export": "shipyard.formats.torch_export",
}


def handler(fmt: str) -> ModuleType:
    """The module that knows ``fmt``; each has ``signature(model)`` and ``summarize(model)``."""
    return importlib.import_module(_MODULES[fmt])
