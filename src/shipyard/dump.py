"""Intermediate tensors: list them in execution order and fetch any subset of them.

One ``TensorSource`` per engine, each using the engine's own way to expose intermediates:
ONNX gets the tensors added as extra graph outputs, LiteRT keeps every tensor alive with
``experimental_preserve_all_tensors`` (its arena otherwise reuses buffers), a TF v1 Session
fetches any tensor by name, a functional Keras model is re-wired to return layer outputs, and
a TorchScript graph is inlined and made to return its tensor values.
``fetch`` returns the values as the engine holds them (int8 for a quantized tensor);
``quantization(name)`` is the scale and zero point the engine reports for a tensor, which
``real_values`` (dump's figures and file, ``compare --layerwise``) applies before anything is
computed on it.
Fetching a chosen subset (not "everything at once") is what lets ``compare --layerwise``
stream through a large model in bounded memory.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.deps import require
from shipyard.errors import InputError, UnsupportedError
from shipyard.model import Model, Quantization, Signature, dequantize, tensor_name


@dataclass(frozen=True)
class TensorInfo:
    name: str
    op: str       # the producing op's type
    node: str     # the producing node/layer name


class TensorSource(ABC):
    """Base: a runner plus the list of intermediate tensors it can return."""

    signature: Signature
    backend: str

    @abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every intermediate tensor this engine can return, in execution order."""

    @abstractmethod
    def fetch(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Run the model once and return the named tensors."""

    def quantization(self, name: str) -> Quantization | None:
        """The scale and zero point of an int8/uint8 tensor, as the engine reports them (None: a
        float tensor, or an engine that reports none). Base: the signature's inputs and outputs."""
        for spec in (*self.signature.inputs, *self.signature.outputs):
            if tensor_name(spec.name) == tensor_name(name):
                return spec.quantization
        return None

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resolve(self, names: list[str]) -> list[str]:
        """User-given names (with or without ``:0``) -> this source's own names."""
        known = {tensor_name(t.name): t.name for t in self.tensors()}
        known.update({tensor_name(s.name): s.name for s in self.signature.outputs})
        missing = [n for n in names if tensor_name(n) not in known]
        if missing:
            sample = ", ".join(t.name for t in self.tensors()[:8])
            raise InputError(f"no tensor named {', '.join(missing)} in the model",
                             hint=f"tensors include: {sample} ... (see 'shipyard dump MODEL --list')")
        return [known[tensor_name(n)] for n in names]


class OnnxSource(TensorSource):
    def __init__(self, model: Model, threads: int | None = None):
        from shipyard.formats.onnx import load_proto
        from shipyard.runtimes.ort import OnnxRuntimeRunner

        self.model = model
        self.proto = load_proto(model.path, external_data=True)
        self.runner = OnnxRuntimeRunner(model, threads=threads)
        self.signature = self.runner.signature
        self.backend = self.runner.backend
        self._threads = threads
        self._base_outputs = len(self.proto.graph.output)
        self._quant: dict[str, Quantization] | None = None

    def tensors(self) -> list[TensorInfo]:
        # ONNX requires graph nodes to be stored in topological order.
        return [TensorInfo(out, node.op_type, node.name or out)
                for node in self.proto.graph.node for out in node.output if out]

    def quantization(self, name):
        if self._quant is None:
            from shipyard.runtimes.ort import onnx_quantization

            self._quant = onnx_quantization(self.proto.graph)
        return self._quant.get(name) or super().quantization(name)

    def fetch(self, feeds, names):
        import onnx

        from shipyard.runtimes.ort import OnnxRuntimeRunner

        graph = self.proto.graph
        del graph.output[self._base_outputs:]
        present = {o.name for o in graph.output}
        graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
        guard.stage(f"running {self.model.display} with {len(names)} extra outputs")
        with OnnxRuntimeRunner(self.model, threads=self._threads, model_bytes=self.proto.SerializeToString()) as r:
            out = r.run(feeds)
        del graph.output[self._base_outputs:]
        return {n: out[n] for n in names}


class LiteRTSource(TensorSource):
    def __init__(self, model: Model, threads: int | None = None):
        from shipyard.runtimes.litert import LiteRTRunner, tflite_quantization

        self.runner = LiteRTRunner(model, threads=threads)  # parses and bounds-checks the file first
        self.signature = self.runner.signature
        self.backend = self.runner.backend
        # Delegates (XNNPACK) fuse whole subgraphs and hide their intermediates: use the plain
        # builtin kernels, and keep every tensor alive instead of letting the arena reuse it.
        interp_mod = require("ai_edge_litert.interpreter", "Dumping TFLite tensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": that is the point
            interp = interp_mod.Interpreter(
                model_path=str(model.path), experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                **({"num_threads": threads} if threads else {}))
        interp.allocate_tensors()
        self.runner.interpreter = interp
        self.runner._inputs = interp.get_input_details()
        self.runner._outputs = interp.get_output_details()
        details = interp.get_tensor_details()
        self._index = {d["name"]: d["index"] for d in details}
        names = {d["index"]: d["name"] for d in details}
        self._quant = {d["name"]: q for d in details
                       if np.dtype(d["dtype"]).kind in "iu" and (q := tflite_quantization(d)) is not None}
        self._tensors = [TensorInfo(names[i], op["op_name"], op["op_name"] + f"#{op['index']}")
                         for op in interp._get_ops_details() for i in op["outputs"] if i in names]

    def tensors(self):
        return self._tensors

    def quantization(self, name):
        return self._quant.get(name) or super().quantization(name)

    def fetch(self, feeds, names):
        self.runner.run(feeds)
        interp = self.runner.interpreter
        return {n: np.array(interp.get_tensor(self._index[n])) for n in names}


_TF_SKIP = {"Const", "Placeholder", "NoOp", "VarHandleOp", "ReadVariableOp", "VariableV2", "Assign", "AssignVariableOp",
            "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin"}


class TFGraphSource(TensorSource):
    def __init__(self, model: Model, threads: int | None = None):
        from shipyard.runtimes.tensorflow import TensorFlowRunner

        self.runner = TensorFlowRunner(model, threads=threads)
        if self.runner._session is None:
            raise UnsupportedError("internal: expected a session-based TensorFlow model")
        self.signature = self.runner.signature
        self.backend = self.runner.backend
        graph = self.runner._session.graph
        self._tensors = [TensorInfo(t.name, op.type, op.name) for op in graph.get_operations()
                         if op.type not in _TF_SKIP for t in op.outputs
                         if t.dtype.is_numpy_compatible and t.dtype != "resource"]

    def tensors(self):
        return self._tensors

    def fetch(self, feeds, names):
        from shipyard.runtimes.tensorflow import tf_name

        feed_dict = {tf_name(k): v for k, v in _validated(self.runner, feeds).items()}
        guard.stage(f"fetching {len(names)} tensors with TensorFlow")
        values = self.runner._session.run([tf_name(n) for n in names], feed_dict)
        return dict(zip(names, values))


class KerasSource(TensorSource):
    """A functional/sequential Keras model re-wired to return every layer's output."""

    def __init__(self, model: Model, threads: int | None = None):
        from shipyard.formats import keras as keras_format
        from shipyard.runtimes.tensorflow import TensorFlowRunner

        self.runner = TensorFlowRunner(model, threads=threads)
        self.signature = self.runner.signature
        self.backend = self.runner.backend
        self._keras = keras_format.load(model)
        try:
            layers = [layer for layer in self._keras.layers if layer.__class__.__name__ != "InputLayer"]
            self._outputs = {layer.name: layer.output for layer in layers}
        except (AttributeError, ValueError) as exc:
            raise UnsupportedError(f"{model.path}: only functional and Sequential Keras models expose layer outputs") from exc
        self._tensors = [TensorInfo(layer.name, layer.__class__.__name__, layer.name) for layer in layers]

    def tensors(self):
        return self._tensors

    def fetch(self, feeds, names):
        import keras

        sub = keras.Model(self._keras.inputs, [self._outputs[n] for n in names])
        checked = _validated(self.runner, feeds)
        args = [checked[s.name] for s in self.signature.inputs]
        values = sub(args, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {n: np.asarray(v) for n, v in zip(names, values)}


class TorchScriptSource(TensorSource):
    """TorchScript: the forward graph is inlined (submodule calls expanded), every tensor value
    is packed into a tuple output, and the edited graph runs as a function on the module.

    Tensor names are the graph's value names (``input.4``); the op is the aten kind.
    ``torch._C`` graph editing is private API, but it is what TorchScript offers for this:
    the module's own forward returns only its outputs, and hooks do not fire in a traced graph.
    """

    _SKIP = ("prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct")

    def __init__(self, model: Model, threads: int | None = None):
        from shipyard.runtimes.torch import TorchScriptRunner

        self.runner = TorchScriptRunner(model, threads=threads)
        self.signature = self.runner.signature
        self.backend = self.runner.backend
        torch = self.runner.torch
        self._graph = self.runner.module.graph.copy()
        torch._C._jit_pass_inline(self._graph)
        # Values are found again by position: copying a graph renumbers unnamed values ("40").
        self._position: dict[str, tuple[int, int]] = {}
        self._tensors = []
        for i, node in enumerate(self._graph.nodes()):
            if node.kind() in self._SKIP:
                continue
            for j, value in enumerate(node.outputs()):
                if isinstance(value.type(), torch._C.TensorType):
                    self._position[value.debugName()] = (i, j)
                    self._tensors.append(TensorInfo(value.debugName(), node.kind(), value.debugName()))

    def tensors(self):
        return self._tensors

    def fetch(self, feeds, names):
        torch = self.runner.torch
        graph = self._graph.copy()
        nodes = list(graph.nodes())
        chosen = [nodes[i].outputsAt(j) for i, j in (self._position[n] for n in names)]
        pack = graph.create("prim::TupleConstruct", chosen)
        graph.appendNode(pack)
        pack.output().setType(torch._C.TupleType([v.type() for v in chosen]))
        graph.eraseOutput(0)
        graph.registerOutput(pack.output())
        fn = torch._C._create_function_from_graph("shipyard_dump", graph)
        checked = _validated(self.runner, feeds)
        args = [torch.from_numpy(checked[s.name].copy()) for s in self.signature.inputs]
        guard.stage(f"fetching {len(names)} tensors with TorchScript")
        with torch.inference_mode():
            values = fn(self.runner.module._c, *args)
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values)}


def _validated(runner, feeds):
    from shipyard.runtimes.base import validate_feeds

    return validate_feeds(runner.signature, feeds)


def open_source(path_or_model: str | Path | Model, backend: str | None = None,
                threads: int | None = None) -> TensorSource:
    """The tensor source for a model on its (given or default) backend."""
    from shipyard.inspect import as_model
    from shipyard.runtimes import DEFAULT_BACKEND, backend_name

    model = as_model(path_or_model)
    name = backend_name(backend) if backend else DEFAULT_BACKEND[model.format]
    guard.stage(f"loading {model.display} with {name} to expose intermediate tensors")
    if model.format == "onnx" and name == "onnxruntime":
        return OnnxSource(model, threads)
    if model.format == "tflite" and name == "litert":
        return LiteRTSource(model, threads)
    if model.format in ("tf-graphdef", "tf-checkpoint", "tfjs") and name == "tensorflow":
        return TFGraphSource(model, threads)
    if model.format == "keras" and name == "tensorflow":
        return KerasSource(model, threads)
    if model.format == "torchscript" and name == "torch":
        return TorchScriptSource(model, threads)
    raise UnsupportedError(
        f"intermediate tensors of a {model.format} model on {name} cannot be exposed",
        hint="convert it to ONNX, TFLite or a frozen GraphDef first (a SavedModel runs its "
             "signature as one function call)",
    )


def dump_tensors(source: TensorSource, feeds: dict[str, np.ndarray], names: list[str] | None = None,
                 chunk: int = 64) -> dict[str, np.ndarray]:
    """Values of ``names`` (all intermediates when None), fetched ``chunk`` tensors per run."""
    wanted = source.resolve(names) if names else [t.name for t in source.tensors()]
    values: dict[str, np.ndarray] = {}
    for start in range(0, len(wanted), chunk):
        values.update(source.fetch(feeds, wanted[start:start + chunk]))
    return values


def real_values(source: TensorSource, values: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Quantization]]:
    """Fetched values as real numbers: each int8/uint8 tensor the engine reports a scale and zero
    point for is dequantized (``(q - zero_point) * scale``, per channel where it is). Returns the
    values and the quantization of the tensors that were dequantized."""
    real: dict[str, np.ndarray] = {}
    used: dict[str, Quantization] = {}
    for name, value in values.items():
        q = source.quantization(name) if np.asarray(value).dtype.kind in "iu" else None
        real[name] = dequantize(value, q)
        if q is not None:
            used[name] = q
    return real, used


def npz_entries(raw: dict[str, np.ndarray], real: dict[str, np.ndarray],
                quantized: dict[str, Quantization]) -> dict[str, np.ndarray]:
    """What ``dump`` writes: every tensor's real values under its name; for a quantized tensor
    also ``NAME#quantized`` (the engine's integers), ``NAME#scale``, ``NAME#zero_point`` and,
    per channel, ``NAME#axis``."""
    entries: dict[str, np.ndarray] = {}
    for name, value in real.items():
        entries[name] = value
        q = quantized.get(name)
        if q is not None:
            entries[f"{name}#quantized"] = raw[name]
            entries[f"{name}#scale"] = np.asarray(q.scale, np.float64)
            entries[f"{name}#zero_point"] = np.asarray(q.zero_point, np.int64)
            if q.axis is not None:
                entries[f"{name}#axis"] = np.asarray(q.axis, np.int64)
    return entries
