"""onnxruntime runner (CPU execution provider unless told otherwise)."""
from __future__ import annotations

from shipyard.deps import require
from shipyard.errors import ModelLoadError, engine_message
from shipyard.model import Model, Quantization, Signature, TensorSpec
from shipyard.runtimes.base import BaseRunner, TensorInfo

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool", "tensor(string)": "string",
    "tensor(bfloat16)": "bfloat16",
}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) else -1 for d in arg.shape) if arg.shape is not None else None
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeRunner(BaseRunner):
    backend = "onnxruntime"
    intermediate_formats = frozenset({"onnx"})

    def __init__(self, model: Model, threads: int | None = None, providers: list[str] | None = None,
                 session_options=None, model_bytes: bytes | None = None, intermediates: bool = False):
        ort = require("onnxruntime", "Running an ONNX model")
        ort.set_default_logger_severity(4)  # errors reach the user as exceptions, not as red log lines
        opts = session_options or ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        model_bytes = model_bytes if model_bytes is not None else model.in_memory()
        source = model_bytes if model_bytes is not None else str(model.path)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types, all unrelated
            raise ModelLoadError(f"{model.path}: onnxruntime cannot load the model: {engine_message(exc)}") from exc
        sig = Signature(tuple(_spec(i) for i in self.session.get_inputs()), tuple(_spec(o) for o in self.session.get_outputs()))
        if any(s.dtype in _QUANT_DTYPES for s in (*sig.inputs, *sig.outputs)):
            sig = _with_quantization(sig, model, model_bytes)
        super().__init__(model, sig, threads)
        self._output_names = [o.name for o in sig.outputs]
        self._ort, self._options, self._providers = ort, opts, providers or ["CPUExecutionProvider"]
        self._proto = None
        if intermediates:
            from shipyard.formats.onnx import load_proto

            self._proto = load_proto(model.path, external_data=True)
        self._probe: tuple[tuple[str, ...], object] | None = None
        self._quant: dict[str, Quantization] | None = None

    def _run(self, feeds):
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))

    # -- intermediates: the chosen tensors become extra graph outputs of a second session -------

    def tensors(self) -> list[TensorInfo]:
        # ONNX requires graph nodes to be stored in topological order.
        return [TensorInfo(out, node.op_type, node.name or out)
                for node in self._proto.graph.node for out in node.output if out]

    def quantization(self, name):
        if self._quant is None:
            self._quant = onnx_quantization(self._proto.graph)
        return self._quant.get(name) or super().quantization(name)

    def _fetch(self, feeds, names):
        """One session per chunk of names, built when the chunk changes: a session exposing every
        tensor at once would keep them all alive, and chunks are what bound the memory of
        ``compare --layerwise`` on a large model."""
        import onnx

        from shipyard import guard

        key = tuple(names)
        if self._probe is None or self._probe[0] != key:
            self._probe = None  # release the previous chunk's session first
            graph = self._proto.graph
            base = len(graph.output)
            present = {o.name for o in graph.output}
            graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in present)
            try:
                session = self._ort.InferenceSession(self._proto.SerializeToString(), sess_options=self._options,
                                                     providers=self._providers)
            finally:
                del graph.output[base:]
            self._probe = (key, session)
        guard.stage(f"running {self.model.display} with {len(names)} extra outputs")
        return dict(zip(names, self._probe[1].run(list(names), feeds)))


_QUANT_DTYPES = ("int8", "uint8", "int16", "uint16")
# Where the scale and zero point of output 0 are among a quantized node's inputs.
_QUANT_INPUTS = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7), "QGemm": (7, 8), "QLinearConcat": (0, 1), "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4), "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4),
    "QLinearSoftmax": (3, 4), "QLinearReduceMean": (3, 4),
}
# Ops that move or select quantized values without changing them: outputs keep input 0's quantization.
_QUANT_PASSTHROUGH = {
    "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "GlobalMaxPool", "Identity", "Slice",
    "Split", "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Pad", "ReduceMax", "ReduceMin",
}


def onnx_quantization(graph) -> dict[str, Quantization]:
    """The quantization of every tensor of a QOperator/QDQ graph whose scale and zero point are
    constants: the outputs of QuantizeLinear and QLinear* nodes (their scale/zero-point inputs),
    the inputs of DequantizeLinear nodes, and the outputs of data-movement ops (Transpose,
    Reshape, MaxPool...) applied to such tensors."""
    from onnx import numpy_helper

    consts = {t.name: t for t in graph.initializer if not t.external_data}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t

    def read(node, i_scale: int, i_zero: int) -> Quantization | None:
        inputs = list(node.input)
        if len(inputs) <= i_scale or inputs[i_scale] not in consts:
            return None  # computed at run time (DynamicQuantizeLinear) or absent (a float QGemm)
        has_zero = len(inputs) > i_zero and inputs[i_zero]
        if has_zero and inputs[i_zero] not in consts:
            return None
        zero = numpy_helper.to_array(consts[inputs[i_zero]]) if has_zero else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return Quantization.of(numpy_helper.to_array(consts[inputs[i_scale]]), zero, axis)

    found: dict[str, Quantization] = {}
    for node in graph.node:
        if node.op_type in _QUANT_INPUTS and node.output:
            q = read(node, *_QUANT_INPUTS[node.op_type])
            if q is not None:
                found[node.output[0]] = q
        elif node.op_type == "DequantizeLinear" and node.input and node.input[0] not in found:
            q = read(node, 1, 2)
            if q is not None:
                found[node.input[0]] = q
        elif node.op_type in _QUANT_PASSTHROUGH and node.input and node.input[0] in found:
            q = found[node.input[0]]
            if q.axis is None:  # a per-channel axis would move with the data
                for out in node.output:
                    if out:
                        found[out] = q
    return found


def _with_quantization(signature: Signature, model: Model, model_bytes: bytes | None) -> Signature:
    """Attach the graph's quantization to integer inputs and outputs (a model with int8 I/O)."""
    import dataclasses

    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(model_bytes) if model_bytes is not None else onnx.load(str(model.path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):  # the session loaded it: only the quantization is lost
        return signature
    found = onnx_quantization(proto.graph)

    def attach(spec):
        q = found.get(spec.name)
        return dataclasses.replace(spec, quantization=q) if q is not None and spec.dtype in _QUANT_DTYPES else spec

    return Signature(tuple(map(attach, signature.inputs)), tuple(map(attach, signature.outputs)))
