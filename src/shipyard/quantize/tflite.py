"""Keras / SavedModel -> quantized TFLite with TensorFlow's own converter.

Modes: dynamic range (int8 weights, float activations quantized per call), float16, full
int8 with a representative dataset (``static``; ``int8_io`` makes inputs/outputs int8 too).
The float TFLite model from the same converter is the reference for size, latency and error.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from shipyard import guard
from shipyard.deps import all_output_silenced, require
from shipyard.errors import ModelLoadError, UsageError
from shipyard.model import Model
from shipyard.quantize.report import QuantizeReport


def _converter(tf, model: Model):
    if model.format == "keras":
        from shipyard.formats import keras as keras_format

        return tf.lite.TFLiteConverter.from_keras_model(keras_format.load(model))
    return tf.lite.TFLiteConverter.from_saved_model(str(model.path))


def _convert(converter, what: str) -> bytes:
    try:
        # The calibrator prints its settings from C++, straight to the file descriptors.
        with all_output_silenced():
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ModelLoadError(f"the TFLite converter failed ({what}): {str(exc).strip().splitlines()[0][:300]}") from exc


class _Int8Runner:
    """Run a TFLite model whose inputs/outputs may be int8: quantize feeds, dequantize outputs."""

    def __init__(self, path: Path, threads: int | None):
        from shipyard.runtimes.litert import LiteRTRunner

        self.runner = LiteRTRunner(Model("tflite", path), threads=threads)
        interp = self.runner.interpreter
        self.in_q = {d["name"]: (d["dtype"], d["quantization"]) for d in interp.get_input_details()}
        self.out_q = [(d["dtype"], d["quantization"]) for d in interp.get_output_details()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = {}
        for name, value in feed.items():
            dtype, (scale, zero) = self.in_q.get(name, (value.dtype, (0.0, 0)))
            if np.dtype(dtype).kind in "iu" and value.dtype.kind == "f" and scale:
                info = np.iinfo(dtype)
                value = np.clip(np.round(value / scale + zero), info.min, info.max).astype(dtype)
            ready[name] = value
        out = self.runner.run(ready)
        result = {}
        for (name, value), (dtype, (scale, zero)) in zip(out.items(), self.out_q):
            result[name] = (value.astype(np.float32) - zero) * scale if value.dtype.kind in "iu" and scale else value
        return result

    def close(self):
        self.runner.close()


def _outputs(path: Path, feeds, threads) -> dict[str, np.ndarray]:
    runner = _Int8Runner(path, threads)
    try:
        parts: dict[str, list] = {}
        for feed in feeds:
            for i, value in enumerate(runner.run(feed).values()):
                parts.setdefault(f"output_{i}", []).append(value)
    finally:
        runner.close()
    return {k: np.concatenate(v) for k, v in parts.items()}


def _latency(path: Path, feed, runs: int, threads) -> float:
    from shipyard.passes.verify import median_ms

    runner = _Int8Runner(path, threads)
    try:
        return median_ms(lambda: runner.run(feed), runs)
    finally:
        runner.close()


def _layer_errors(tf, converter, feeds, names, exclude, top: int = 5):
    """TensorFlow's QuantizationDebugger: per-layer RMSE of the int8 layer in units of its
    quantization step (about 0.29 is pure rounding; much more means the layer loses accuracy).
    With ``exclude``, the named layers are denylisted (kept float) in the debugger's model."""
    import csv

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([f[n] for n in names] for f in feeds[:16])
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(exclude)) if exclude else None
    try:
        # The debugger converts and runs interpreters: C++ prints calibrator settings and
        # delegate notices straight to the descriptors.
        with all_output_silenced():
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=lambda: ([f[n] for n in names] for f in feeds[:16]),
                debug_options=options)
            debugger.run()
            dump = io.StringIO()
            debugger.layer_statistics_dump(dump)
    except Exception as exc:  # the debugger raises ValueError/RuntimeError/ConverterError
        raise ModelLoadError(f"the TFLite quantization debugger failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    rows = []
    for rec in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(rec["scale"] or 0)
        if not scale:
            continue
        rows.append({"node": rec["tensor_name"], "op": rec["op_name"],
                     "rmse_per_step": float(np.sqrt(float(rec["mean_squared_error"]))) / scale,
                     "max_abs": float(rec["max_abs_error"])})
    rows.sort(key=lambda r: -r["rmse_per_step"])
    return debugger, rows[:top], {r["node"] for r in rows}


def quantize_to_tflite(model: Model, out_path: Path, req) -> QuantizeReport:
    from shipyard.atomic import atomic_path
    from shipyard.compare import diff
    from shipyard.data import take
    from shipyard.formats.tflite import TFLiteFile
    from shipyard.quantize import _source
    from shipyard.quantize.report import task_accuracy

    tf = require("tensorflow", "Quantizing to TFLite")
    if req.int8_io and req.mode != "static":
        raise UsageError("--int8-io needs --mode static (full integer quantization)")
    report = QuantizeReport(str(model.path), str(out_path), "tflite", req.mode)
    guard.stage("converting the float model to TFLite")
    float_bytes = _convert(_converter(tf, model), "float")
    with tempfile.TemporaryDirectory() as work:
        float_path = Path(work) / "float.tflite"
        float_path.write_bytes(float_bytes)
        signature = TFLiteFile(float_path).signature()
        source = _source(req, report)
        feeds = take(source, signature, req.samples)
        report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
        converter = _converter(tf, model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        names = [s.name for s in signature.inputs]
        if req.mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
            report.settings = {"format": "float16 weights (dequantized at load on CPU)"}
        elif req.mode == "static":
            converter.representative_dataset = lambda: ([f[n] for n in names] for f in feeds)
            if not req.exclude:  # layers kept in float need the float kernels
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if req.int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
            report.settings = {"format": "full integer (int8 weights and activations, XNNPACK)",
                               "io": "int8" if req.int8_io else "float32", "per_channel": True}
        else:
            report.settings = {"format": "dynamic range (int8 weights, activations quantized per call)",
                               "per_channel": True}
            if req.mode == "weights":
                report.warnings.append("TFLite has no weight-only int8 mode on CPU; dynamic range quantization was used")
        if req.exclude and (req.mode != "static" or req.int8_io):
            raise UsageError("--exclude works with TFLite --mode static, without --int8-io")
        debugger = None
        if req.mode == "static" and (req.layers or req.exclude):
            guard.stage("measuring per-layer quantization error")
            _, report.layers, known = _layer_errors(tf, _converter(tf, model), feeds, names, ())
            unknown = [e for e in req.exclude if e not in known]
            if unknown:
                raise UsageError(f"--exclude: no quantized TFLite layer named {', '.join(unknown)}",
                                 hint="the layer names are the 'node' values of the report's layers (quantize --json)")
            if req.exclude:
                debugger = _layer_errors(tf, _converter(tf, model), feeds, names, req.exclude)[0]
        guard.stage(f"converting with {req.mode} quantization")
        data = _convert(converter, req.mode) if not req.exclude else debugger.get_nondebug_quantized_model()
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(data)
            guard.stage("measuring the quantized model")
            report.size_before, report.size_after = len(float_bytes), len(data)
            ref, new = _outputs(float_path, feeds, req.threads), _outputs(tmp, feeds, req.threads)
            report.outputs = [diff(k, ref[k], new[k], atol=1e-2, rtol=1e-1).to_json() for k in ref]
            if source.labels is not None:
                report.accuracy = task_accuracy(source.labels[: len(feeds)], ref, new)
            if req.latency_runs:
                report.latency_before_ms = _latency(float_path, feeds[0], req.latency_runs, req.threads)
                report.latency_after_ms = _latency(tmp, feeds[0], req.latency_runs, req.threads)
    return report
