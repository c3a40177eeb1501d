"""OpenVINO runner on the CPU plugin: reads ONNX, TFLite, SavedModel and frozen GraphDef files
directly (no conversion step), with the same validated feeds as every other runner.

Float artifacts run in float32: OpenVINO's CPU plugin would otherwise pick bfloat16 on CPUs
with AVX512-BF16/AMX, which moves outputs by ~1e-2 and would fail the exact check of a float
artifact. ``precision="bf16"`` asks for it explicitly (a lossy choice, judged by a budget).
"""
from __future__ import annotations

import numpy as np

from shipyard.deps import require
from shipyard.errors import ModelLoadError, ModelRunError, UnsupportedError
from shipyard.formats import openvino_ir, registry
from shipyard.formats.openvino_ir import first_reason, port_name, port_spec
from shipyard.model import Model, Signature
from shipyard.runtimes.base import BaseRunner

FORMATS = tuple(sorted(registry.formats_by_engine()["openvino"]))  # the files OpenVINO reads directly
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVINORunner(BaseRunner):
    backend = "openvino"

    def __init__(self, model: Model, threads: int | None = None, precision: str = "fp32", profile: bool = False,
                 model_bytes: bytes | None = None):
        ov = require("openvino", "Running a model on OpenVINO")
        if model.format not in FORMATS:
            raise UnsupportedError(f"OpenVINO does not read {model.format} models", hint="it reads: " + ", ".join(FORMATS))
        if precision not in PRECISIONS:
            raise UnsupportedError(f"unknown OpenVINO precision '{precision}'", hint="one of: " + ", ".join(PRECISIONS))
        model_bytes = model_bytes if model_bytes is not None else model.in_memory()
        if model_bytes is not None and model.format not in openvino_ir.IN_MEMORY_FORMATS:
            raise UnsupportedError(f"{model.path}: OpenVINO reads an encrypted model from memory only for ONNX and IR",
                                   hint="run the encrypted model on its default backend")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if profile:
            config["PERF_COUNT"] = True
        try:
            if model.format == "openvino-ir":
                self.ov_model = openvino_ir.read(core, model, model_bytes)
            else:
                self.ov_model = core.read_model(model_bytes if model_bytes is not None else str(model.path))
            self.compiled = core.compile_model(self.ov_model, "CPU", config)
        except ModelLoadError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with multi-line logs
            raise ModelLoadError(f"{model.path}: OpenVINO cannot load the model ({first_reason(exc)})") from exc
        self.request = self.compiled.create_infer_request()
        self._ov = ov
        self.precision = precision
        # an IR's own names are its ports' (formats/openvino_ir.py): no second read of it for them
        wanted = set() if model.format == "openvino-ir" else _own_names(model)
        ins = [port_spec(p, port_name(p, wanted)) for p in self.compiled.inputs]
        outs = [port_spec(p, port_name(p, wanted)) for p in self.compiled.outputs]
        super().__init__(model, Signature(tuple(ins), tuple(outs)), threads)
        self._out_names = [s.name for s in outs]

    def _run(self, feeds):
        # Tensors set one by one and a plain infer(): half the per-call cost of infer(dict) and its
        # OVDict (36 vs 78 us on a 100 KFLOP CNN), which matters for small models and serving.
        request, tensor = self.request, self._ov.Tensor
        # The shared tensors point into these arrays, which must outlive infer(): a temporary
        # (a contiguous copy of a transposed feed) would be freed under the engine's feet.
        values = [np.ascontiguousarray(feeds[spec.name]) for spec in self.signature.inputs]
        try:
            for i, value in enumerate(values):
                request.set_input_tensor(i, tensor(value, shared_memory=True))
            request.infer()
        except RuntimeError as exc:  # its messages open with 'Exception from src/...:NN': say the reason
            raise ModelRunError(f"openvino failed while running {self.model.path}: {first_reason(exc)}") from exc
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self._out_names)}

    def profiling(self) -> list[tuple[str, float]]:
        """``(node type, microseconds)`` of every executed node in the last run (``profile=True``)."""
        return [(p.node_type, p.real_time.total_seconds() * 1e6) for p in self.request.get_profiling_info()
                if p.status.name == "EXECUTED"]


def _own_names(model: Model) -> set[str]:
    """Input/output names of the format's own signature (a frozen graph's output may have aliases)."""
    from shipyard.errors import ShipyardError
    from shipyard.formats import handler

    try:
        sig = handler(model.format).signature(model)
    except (ShipyardError, ValueError, OSError):
        return set()
    return {s.name for s in (*sig.inputs, *sig.outputs)}
