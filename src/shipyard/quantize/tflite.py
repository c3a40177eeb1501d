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


def _converters(tf, model: Model, work: Path):
    """A factory of fresh TFLite converters for ``model`` (each calibration or conversion needs
    its own). A SavedModel is frozen first, as ``convert --to tflite`` does, so exports that
    TensorFlow's object-graph loader cannot read (Keras 2 with optimizer slots) quantize too; a
    frozen GraphDef goes to the converter as it is."""
    if model.format == "keras":
        from shipyard.formats import keras as keras_format

        keras_model = keras_format.load(model)
        return lambda: tf.lite.TFLiteConverter.from_keras_model(keras_model)
    from shipyard.convert.options import ConvertOptions
    from shipyard.convert.tf_edges import tflite_converter

    if model.format == "tf-graphdef":  # frozen already: `quantize frozen.pb --mode static` is one command
        return lambda: tflite_converter(model, ConvertOptions())
    from shipyard.convert.api import convert_model

    guard.stage("freezing the SavedModel")
    frozen = convert_model(str(model.path), "pb", work / "frozen.pb", check=False).artifact
    return lambda: tflite_converter(frozen, ConvertOptions())


def _convert(converter, what: str) -> bytes:
    try:
        # The calibrator prints its settings from C++, straight to the file descriptors.
        with all_output_silenced():
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ModelLoadError(f"the TFLite converter failed ({what}): {str(exc).strip().splitlines()[0][:300]}") from exc


def _outputs(path: Path, feeds, threads) -> dict[str, np.ndarray]:
    """Every output over every feed, in real values (the LiteRT runner quantizes real inputs for
    int8 inputs; int8 outputs are dequantized)."""
    from shipyard.verify import model_outputs

    return model_outputs(Model("tflite", path), feeds, threads=threads)[1]


def _latency(path: Path, feed, runs: int, threads) -> float:
    from shipyard.timing import latency_ms

    return latency_ms(Model("tflite", path), feed, runs, threads)


def _calibrate(tf, make_converter, feeds, names) -> bytes:
    """The float model with calibration statistics, converted once for every trial of the search."""
    converter = make_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([f[n] for n in names] for f in feeds)
    # What tf.lite.experimental.QuantizationDebugger does to calibrate without quantizing; the
    # debugger then quantizes that model with deny-lists through mlir_quantize, as we do.
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # the debugger's own route
    return _convert(converter, "calibration")


def _quantize_calibrated(calibrated: bytes, per_channel: bool, kept: tuple[str, ...], int8_io: bool = False) -> bytes:
    """The calibrated model quantized, ``kept`` layers left in float (the deny-list), with int8
    inputs and outputs when asked: what TFLiteConverter.convert() does after calibrating."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    io = {"input_data_type": tf.int8, "output_data_type": tf.int8} if int8_io else {}
    try:
        with all_output_silenced():
            return convert.mlir_quantize(calibrated, disable_per_channel=not per_channel, fully_quantize=int8_io,
                                         denylisted_nodes=list(kept) or None, **io)
    except Exception as exc:  # ConverterError and friends
        raise ModelLoadError(f"the TFLite quantizer failed: {str(exc).strip()[:500]}") from exc


def _computes_in_int8(path: Path) -> bool:
    """Whether any op of the model still computes in 8/16-bit integers."""
    from shipyard.formats.tflite import ops_by_output

    return bool(ops_by_output(path.read_bytes(), ("int8", "uint8", "int16")))


def _float_layers(calibrated: bytes) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({output tensor name: op}, {name: the candidates feeding it}) of the calibrated model's
    float ops: the candidates to keep in float (names from the float model are the ones the
    quantizer's deny-list matches)."""
    from shipyard.formats.tflite import ops_by_output

    ops = ops_by_output(calibrated)
    return {k: op for k, (op, _) in ops.items()}, {k: [i for i in inputs if i in ops] for k, (_, inputs) in ops.items()}


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
    from shipyard.formats.tflite import TFLiteFile
    from shipyard.quantize.request import (
        calibration_source,
        check_speed,
        finish,
        samples_and_labels,
        warn_if_not_smaller,
    )
    from shipyard.quantize.search import Search
    from shipyard.verify import judge

    tf = require("tensorflow", "Quantizing to TFLite")
    if req.int8_io and req.mode != "static":
        raise UsageError("--int8-io needs --mode static (full integer quantization)")
    if req.exclude and req.mode != "static":
        raise UsageError("--exclude works with TFLite --mode static")
    report = QuantizeReport(str(model.path), str(out_path), "tflite", req.mode)
    with tempfile.TemporaryDirectory() as work:
        make_converter = _converters(tf, model, Path(work))
        guard.stage("converting the float model to TFLite")
        float_bytes = _convert(make_converter(), "float")
        float_path = Path(work) / "float.tflite"
        float_path.write_bytes(float_bytes)
        signature = TFLiteFile(float_path).signature()
        source = calibration_source(req, report)
        feeds, labels = samples_and_labels(source, signature, req)
        report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
        reference = _outputs(float_path, feeds, req.threads)
        req.budget.check_outputs(reference)  # a per-output budget naming no output: before any trial
        names = [s.name for s in signature.inputs]

        def evaluate(path: Path):
            return judge(reference, _outputs(path, feeds, req.threads), req.budget, labels)

        if req.mode == "static":
            guard.stage("calibrating")
            calibrated = _calibrate(tf, make_converter, feeds, names)
            candidates, producers = _float_layers(calibrated)
            unknown = [e for e in req.exclude if e not in candidates]
            if unknown:
                raise UsageError(f"--exclude: no quantized TFLite layer named {', '.join(unknown)}",
                                 hint="layer names look like: " + ", ".join(list(candidates)[:5]))
            counter = iter(range(10**9))

            def build(settings: dict, kept: tuple[str, ...]) -> Path:
                path = Path(work) / f"trial{next(counter)}.tflite"
                path.write_bytes(_quantize_calibrated(calibrated, settings["per_channel"], tuple(req.exclude) + kept,
                                                      req.int8_io))
                return path

            def latency(path: Path) -> float:
                return _latency(path, feeds[0], max(req.latency_runs, 10), req.threads)

            variants = [{"per_channel": True}, {"per_channel": False}] if req.search else [{"per_channel": True}]
            result = Search(build, evaluate, latency if req.latency_runs else None, variants,
                            {k: v for k, v in candidates.items() if k not in req.exclude} if req.search else {},
                            producers=producers, quantized=_computes_in_int8, max_trials=req.max_trials,
                            max_seconds=req.max_seconds).run()
            data = result.chosen.path.read_bytes()
            verification = result.chosen.verification
            report.search = result.to_json() if req.search else None
            kept = list(req.exclude) + list(result.chosen.kept_float)
            report.settings = {"format": "full integer (int8 weights and activations, XNNPACK)" if not kept
                               else "int8 with the listed layers kept in float", "io": "int8" if req.int8_io else "float32",
                               "per_channel": result.chosen.settings["per_channel"], "kept_float": kept}
            if req.layers and not result.sensitivity:  # the search's sensitivities at the outputs say more
                guard.stage("measuring per-layer quantization error")
                _, report.layers, _ = _layer_errors(tf, make_converter(), feeds, names, ())
        else:
            converter = make_converter()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if req.mode == "float16":
                converter.target_spec.supported_types = [tf.float16]
                report.settings = {"format": "float16 weights (dequantized at load on CPU)"}
            else:
                report.settings = {"format": "dynamic range (int8 weights, activations quantized per call)",
                                   "per_channel": True}
                if req.mode == "weights":
                    report.warnings.append("TFLite has no weight-only int8 mode on CPU; dynamic range quantization was used")
            guard.stage(f"converting with {req.mode} quantization")
            data = _convert(converter, req.mode)
            candidate = Path(work) / "quantized.tflite"
            candidate.write_bytes(data)
            verification = evaluate(candidate)
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(data)
            guard.stage("measuring the quantized model")
            report.size_before, report.size_after = len(float_bytes), len(data)
            if req.latency_runs:
                report.latency_before_ms = _latency(float_path, feeds[0], req.latency_runs, req.threads)
                report.latency_after_ms = _latency(tmp, feeds[0], req.latency_runs, req.threads)
            warn_if_not_smaller(report)
            finish(report, verification, req, f"the {req.mode}-quantized TFLite model")
            if req.mode == "static":
                # the same rule as for onnxruntime: an int8 model slower than its float one is not written
                check_speed(report, req, "the int8 TFLite model", Model("tflite", float_path), Model("tflite", tmp),
                            feeds[0])
    return report
