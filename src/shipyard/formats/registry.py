"""Every model format shipyard knows, declared once: the one place to add a format.

Each declaration says what the rest of the code used to keep in its own table: the module
that reads it (``signature``/``summarize``), the engine that runs it by default and the ones
that can, the suffix a converted file gets, whether it is a folder, and the platform name the
serving protocols report. The names sniffing accepts, ``formats.handler``, ``runtimes.DEFAULT_BACKEND``
and ``SUPPORTED``, ``convert.planner.SUFFIX``, ship's artifact names and the serving
platforms are views of this table. Nothing heavy is imported here (pure data).

What a feature does with one format is named here too, as ``"module:function"`` references
that ``formats.capability(fmt, field)`` imports when it is asked for: how ``graph`` draws it
(``graph_reader``), how conversion reaches its frozen GraphDef (``frozen``), what ``quantize``
does with it (``quantizer``), which engines' op profilers ``bench --profile`` can use on it
(``profilers``), which ``ops --for`` lists its ops, which files a model of several is (``files``).
Code outside ``formats/`` does not enumerate format names; ``tests/test_registry_only.py`` checks.
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
    word: str = ""                  # its name in a sentence ("a TFLite model")
    graph_reader: str | None = None  # "module:function": model -> graph_view.Graph (shipyard graph)
    frozen: str | None = None       # "module:function": (model, ConvertOptions) -> its frozen GraphDef (convert)
    profilers: tuple[str, ...] = ()  # engines whose per-op profiler runs it (bench --profile, profile.py)
    quantizer: str | None = None    # "module:function": (model, out_path, quantize.Request) -> QuantizeReport (quantize)
    ops: str | None = None          # the `ops --for` target that lists its ops (ort, tflite); `graph` ones: tf
    files: str | None = None        # "module:function": path -> {name: path}, when a model is several files

    @property
    def ops_target(self) -> str | None:
        """The ``ops --for`` target that lists its ops; None when no target does."""
        return self.ops or ("tf" if self.graph else None)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("onnx", "shipyard.formats.onnx", "onnxruntime", ("onnxruntime", "openvino"), ".onnx",
           platform="onnxruntime_onnx", description="ONNX model (.onnx, external data beside it)", word="ONNX",
           graph_reader="shipyard.graph_view:_onnx_graph", profilers=("onnxruntime", "openvino"), ops="ort",
           quantizer="shipyard.quantize:quantize_onnx"),
    Format("tflite", "shipyard.formats.tflite", "litert", ("litert", "openvino"), ".tflite",
           platform="tflite", description="TFLite / LiteRT flatbuffer", word="TFLite",
           graph_reader="shipyard.graph_view:_tflite_graph", profilers=("litert", "openvino"), ops="tflite"),
    Format("tf-graphdef", "shipyard.formats.tf_graph", "tensorflow", ("tensorflow", "openvino"), ".pb",
           platform="tensorflow_graphdef", description="TensorFlow GraphDef (frozen .pb or text .pbtxt)", graph=True,
           also=(".pbtxt",), word="GraphDef", graph_reader="shipyard.graph_view:_tf_graph",
           frozen="shipyard.convert.tf_edges:frozen_from_graphdef", profilers=("tensorflow", "openvino"),
           quantizer="shipyard.quantize:quantize_graphdef"),
    Format("tf-checkpoint", "shipyard.formats.tf_checkpoint", "tensorflow", ("tensorflow",),
           platform="tensorflow_checkpoint", description="TF1 checkpoint with its .meta graph", graph=True,
           word="TF checkpoint", frozen="shipyard.convert.tf_edges:frozen_from_checkpoint", profilers=("tensorflow",)),
    Format("tf-savedmodel", "shipyard.formats.tf_saved", "tensorflow", ("tensorflow", "openvino"), "",
           directory=True, platform="tensorflow_savedmodel", description="TensorFlow SavedModel folder", graph=True,
           word="SavedModel", frozen="shipyard.convert.tf_edges:frozen_from_savedmodel", profilers=("openvino",),
           quantizer="shipyard.quantize:quantize_via_tflite"),
    Format("keras", "shipyard.formats.keras", "tensorflow", ("tensorflow",), ".keras",
           platform="tensorflow_keras", description="Keras model (.keras, .h5)", graph=True,
           also=(".h5",), word="Keras", frozen="shipyard.convert.tf_edges:frozen_from_keras",
           quantizer="shipyard.quantize:quantize_via_tflite"),
    Format("torchscript", "shipyard.formats.torchscript", "torch", ("torch",), ".pt",
           platform="pytorch_libtorch", description="TorchScript archive", also=(".torchscript", ".jit", ".pth"),
           word="TorchScript"),
    Format("tfjs", "shipyard.formats.tfjs", "tensorflow", ("tensorflow",), "", directory=True,
           platform="tensorflow_js", description="TF.js graph model (model.json + weight shards)", word="TF.js",
           profilers=("tensorflow",), files="shipyard.formats.tfjs:files"),
    Format("torch-checkpoint", "shipyard.formats.torch_checkpoint", None, (), ".pt",
           description="torch.save state_dict / checkpoint, .safetensors: weights, no program", word="torch checkpoint"),
    Format("torch-export", "shipyard.formats.torch_export", "torch", ("torch",), ".pt2",
           platform="pytorch_export", description="torch.export.save ExportedProgram (.pt2)", word="torch.export"),
    Format("openvino-ir", "shipyard.formats.openvino_ir", "openvino", ("openvino",), ".xml",
           platform="openvino", description="OpenVINO IR (.xml, its weights in the .bin beside it)", word="OpenVINO IR",
           profilers=("openvino",), files="shipyard.formats.openvino_ir:files"),
    Format("tf-memmapped", "shipyard.formats.tf_memmapped", "tensorflow", ("tensorflow",), ".mmpb",
           platform="tensorflow_memmapped", description="TF's memory-mapped graph (MemmappedEnv)", graph=True,
           also=(".pb",), word="memmapped GraphDef"),
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
    return tuple(dict.fromkeys(s for name in FORMATS for s in file_suffixes(name)))


def platforms() -> dict[str, str]:
    return {f.name: f.platform for f in FORMATS.values() if f.platform}


def file_suffixes(fmt: str) -> tuple[str, ...]:
    """Every suffix a file of ``fmt`` may carry (its own first); empty for a folder format."""
    f = FORMATS[fmt]
    return () if f.directory else ((f.suffix,) if f.suffix else ()) + f.also
