"""Every model format shipyard knows, declared once: the one place to add a format.

Each declaration says what the rest of the code used to keep in its own table: the module
that reads it (``signature``/``summarize``), the engine that runs it by default and the ones
that can, the suffix a converted file gets, whether it is a folder, and the platform name the
serving protocols report. The names sniffing accepts, ``formats.handler``, ``runtimes.DEFAULT_BACKEND``
and ``SUPPORTED``, ``convert.planner.SUFFIX``, ship's artifact names and the serving
platforms are views of this table. Nothing heavy is imported here (pure data).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    module: str                     # shipyard.formats.*: signature(model), summarize(model)
    backend: str | None             # the engine that runs it by default (None: weights only, not runnable)
    engines: tuple[str, ...] = ()   # every engine that runs it (the default first)
    suffix: str | None = None       # what a file of this format written by shipyard is named *.suffix
    directory: bool = False         # a folder (SavedModel, TF.js), not one file
    platform: str | None = None     # KServe/Triton platform name in model metadata and configs
    description: str = ""
    graph: bool = False             # its module's graph_def(model) gives a TensorFlow GraphDef (ops, kernels)
    also: tuple[str, ...] = ()      # other suffixes its files have (.h5 for Keras)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("onnx", "shipyard.formats.onnx", "onnxruntime", ("onnxruntime", "openvino"), ".onnx",
           platform="onnxruntime_onnx", description="ONNX model (.onnx, external data beside it)"),
    Format("tflite", "shipyard.formats.tflite", "litert", ("litert", "openvino"), ".tflite",
           platform="tflite", description="TFLite / LiteRT flatbuffer"),
    Format("tf-graphdef", "shipyard.formats.tf_graph", "tensorflow", ("tensorflow", "openvino"), ".pb",
           platform="tensorflow_graphdef", description="TensorFlow GraphDef (frozen .pb or text .pbtxt)", graph=True),
    Format("tf-checkpoint", "shipyard.formats.tf_checkpoint", "tensorflow", ("tensorflow",),
           platform="tensorflow_checkpoint", description="TF1 checkpoint with its .meta graph", graph=True),
    Format("tf-savedmodel", "shipyard.formats.tf_saved", "tensorflow", ("tensorflow", "openvino"), "",
           directory=True, platform="tensorflow_savedmodel", description="TensorFlow SavedModel folder", graph=True),
    Format("keras", "shipyard.formats.keras", "tensorflow", ("tensorflow",), ".keras",
           platform="tensorflow_keras", description="Keras model (.keras, .h5)", graph=True,
           also=(".h5",)),
    Format("torchscript", "shipyard.formats.torchscript", "torch", ("torch",), ".pt",
           platform="pytorch_libtorch", description="TorchScript archive", also=(".torchscript", ".jit")),
    Format("tfjs", "shipyard.formats.tfjs", "tensorflow", ("tensorflow",), "", directory=True,
           platform="tensorflow_js", description="TF.js graph model (model.json + weight shards)"),
    Format("torch-checkpoint", "shipyard.formats.torch_checkpoint", None, (), ".pt",
           description="torch.save state_dict / checkpoint, .safetensors: weights, no program"),
    Format("torch-export", "shipyard.formats.torch_export", "torch", ("torch",), ".pt2",
           platform="pytorch_export", description="torch.export.save ExportedProgram (.pt2)"),
    Format("tf-memmapped", "shipyard.formats.tf_memmapped", "tensorflow", ("tensorflow",), ".mmpb",
           platform="tensorflow_memmapped", description="TF's memory-mapped graph (MemmappedEnv)", graph=True),
]}


def get(name: str) -> Format:
    return FORMATS[name]


def default_backends() -> dict[str, str]:
    """{format: its default engine} for the runnable formats."""
    return {f.name: f.backend for f in FORMATS.values() if f.backend}


def formats_by_engine() -> dict[str, set[str]]:
    """{engine: the formats it runs}."""
    out: dict[str, set[str]] = {}
    for f in FORMATS.values():
        for engine in f.engines:
            out.setdefault(engine, set()).add(f.name)
    return out


def suffixes() -> dict[str, str]:
    """{format: suffix} for formats written as one file."""
    return {f.name: f.suffix for f in FORMATS.values() if f.suffix and not f.directory}


def model_file_suffixes() -> tuple[str, ...]:
    """Every suffix a model file has, most specific first (picking the model among a folder's files)."""
    return tuple(s for f in FORMATS.values() if not f.directory for s in ((f.suffix,) if f.suffix else ()) + f.also)


def platforms() -> dict[str, str]:
    return {f.name: f.platform for f in FORMATS.values() if f.platform}
