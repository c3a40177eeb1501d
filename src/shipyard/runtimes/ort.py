"""onnxruntime runner (CPU execution provider unless told otherwise)."""
from __future__ import annotations

from shipyard.deps import require
from shipyard.errors import ModelLoadError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.runtimes.base import BaseRunner

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

    def __init__(self, model: Model, threads: int | None = None, providers: list[str] | None = None,
                 session_options=None, model_bytes: bytes | None = None):
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
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
            raise ModelLoadError(f"{model.path}: onnxruntime cannot load the model ({first})") from exc
        sig = Signature(tuple(_spec(i) for i in self.session.get_inputs()), tuple(_spec(o) for o in self.session.get_outputs()))
        super().__init__(model, sig, threads)
        self._output_names = [o.name for o in sig.outputs]

    def _run(self, feeds):
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))
