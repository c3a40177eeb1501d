"""``quantize``: weights-only, dynamic, static (calibrated) and float16 quantization, with a
report of size, latency and error against the float model.

ONNX goes through onnxruntime.quantization, Keras/SavedModel through the TFLite converter,
GraphDef through the ``quantize_weights`` transform.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shipyard import guard
from shipyard.errors import UnsupportedError, UsageError
from shipyard.model import Model, open_model
from shipyard.quantize.report import QuantizeReport

MODES = ("weights", "dynamic", "static", "float16")


@dataclass
class Request:
    mode: str
    calibration: str | None = None
    per_channel: bool = False
    exclude: tuple[str, ...] = ()
    quant_format: str = "qoperator"
    calibrate_method: str = "minmax"
    samples: int = 100
    int8_io: bool = False
    minimum_size: int = 1024
    image_options: dict = field(default_factory=dict)
    latency_runs: int = 30
    threads: int | None = None
    layers: bool = True
    mapping: dict = field(default_factory=dict)  # TFRecord calibration: feature -> input name


def quantize_model(path: str | Path, out: str | Path, req: Request) -> QuantizeReport:
    from shipyard.atomic import check_output_path

    if req.mode not in MODES:
        raise UsageError(f"unknown mode '{req.mode}'", hint="modes: " + ", ".join(MODES))
    model = open_model(path)
    out_path = check_output_path(Path(out), model.path)
    if model.format == "onnx":
        return _onnx(model, out_path, req)
    if model.format in ("keras", "tf-savedmodel"):
        from shipyard.quantize.tflite import quantize_to_tflite

        if out_path.suffix != ".tflite":
            raise UsageError(f"{out_path}: a {model.format} model is quantized to TFLite; name the output *.tflite")
        return quantize_to_tflite(model, out_path, req)
    if model.format == "tflite":
        raise UsageError(f"{model.path}: a TFLite file is already converted; quantize its Keras model or SavedModel",
                         hint="shipyard quantize model.keras --mode static -o model_int8.tflite")
    if model.format == "tf-graphdef":
        return _graphdef(model, out_path, req)
    raise UnsupportedError(f"{model.path}: quantize works on ONNX, Keras, SavedModel and GraphDef models, not {model.format}",
                           hint="convert it to ONNX first")


def _source(req: Request, report: QuantizeReport):
    from shipyard.data import open_source

    source = open_source(req.calibration, count=min(req.samples, 32), image_options=req.image_options,
                         mapping=req.mapping)
    if not source.measured:
        report.warnings.append("calibrated and evaluated on random data: accuracy is not measured; "
                               "give --calibration with real samples")
    return source


def _onnx(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    from shipyard.atomic import atomic_path
    from shipyard.data import take
    from shipyard.formats.onnx import load_proto
    from shipyard.quantize import onnx_quant as oq
    from shipyard.runtimes import open_runner

    proto = load_proto(model.path, external_data=True)
    oq.check_not_quantized(proto, model.path)
    oq.check_exclude(proto, req.exclude)
    report = QuantizeReport(str(model.path), str(out_path), "onnx", req.mode)
    with open_runner(model) as runner:
        signature = runner.signature
    source = _source(req, report)
    feeds = take(source, signature, req.samples)
    report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
    with tempfile.TemporaryDirectory() as work, atomic_path(out_path) as tmp:
        guard.stage("preparing the model for quantization")
        # onnxruntime's pre-processing (BN folding, shape inference) is for static quantization;
        # its shape annotations can trip the dynamic quantizer's own inference
        prepared = oq.prepare(proto, Path(work), optimize=req.mode == "static")
        opts = oq.StaticOptions(req.quant_format, "uint8" if req.quant_format == "qoperator" else "int8", "int8",
                                req.per_channel, req.calibrate_method, tuple(req.exclude))
        guard.stage(f"quantizing ({req.mode})")
        if req.mode == "static":
            report.settings = oq.quantize_static(prepared, tmp, feeds, opts)
            report.settings["why"] = ("QOperator u8/s8 (QLinearConv) is the form onnxruntime runs fastest on x86 CPUs; "
                                      "QDQ s8/s8 runs no faster than float there" if req.quant_format == "qoperator"
                                      else "QDQ keeps the float graph visible to other runtimes (TensorRT, QNN)")
        elif req.mode == "dynamic":
            report.settings = oq.quantize_dynamic(prepared, tmp, req.per_channel, req.exclude)
            if any(n.op_type == "Conv" for n in proto.graph.node):
                report.warnings.append("dynamic quantization runs convolutions as ConvInteger, which onnxruntime runs "
                                       "slower than float on CPUs; --mode static is faster for CNNs")
        elif req.mode == "weights":
            report.settings = oq.quantize_weights_only(prepared, tmp, req.minimum_size, req.exclude)
        else:
            report.settings = oq.to_float16(prepared, tmp, req.exclude)
        _measure(report, model, Model("onnx", tmp), feeds, source.labels, req)
        if req.mode == "static" and req.layers:
            guard.stage("measuring per-layer quantization error")
            report.layers = oq.layer_errors(prepared, feeds[:16], opts)
    return report


def _measure(report: QuantizeReport, ref_model: Model, new_model: Model, feeds, labels, req: Request,
             backend: str | None = None) -> None:
    """Size, latency and error of ``new_model`` against ``ref_model`` on the same feeds."""
    from shipyard.inspect import inspect_model
    from shipyard.passes.verify import collect_outputs, compare_outputs, latency_ms
    from shipyard.quantize.report import task_accuracy

    guard.stage("measuring the quantized model")
    report.size_before = inspect_model(ref_model).size_bytes
    report.size_after = new_model.path.stat().st_size
    ref = collect_outputs(ref_model, feeds, threads=req.threads, backend=backend)
    new = collect_outputs(new_model, feeds, threads=req.threads, backend=backend)
    report.outputs = [d.to_json() for d in compare_outputs(ref, new, atol=1e-2, rtol=1e-1)]
    if labels is not None:
        report.accuracy = task_accuracy(labels[: len(feeds)], ref, new)
    if req.latency_runs:
        report.latency_before_ms = latency_ms(ref_model, feeds[0], req.latency_runs, req.threads, backend)
        report.latency_after_ms = latency_ms(new_model, feeds[0], req.latency_runs, req.threads, backend)


def _graphdef(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    from shipyard.formats import tf_graph

    if req.mode != "weights":
        raise UnsupportedError("a TensorFlow GraphDef can only be quantized with --mode weights (quantize_weights)",
                               hint="for static int8, convert it to ONNX or TFLite first")
    graph_def, _ = tf_graph.load(model)
    if any(n.op in ("Dequantize", "QuantizeV2", "QuantizedConv2D") for n in graph_def.node):
        raise UsageError(f"{model.path}: the graph is already quantized (it has Dequantize nodes)")
    from shipyard.passes.pipeline import transform_model

    result = transform_model(model.path, f"quantize_weights(minimum_size={req.minimum_size})", out_path)
    report = QuantizeReport(str(model.path), str(out_path), "tf-graphdef", "weights",
                            settings={"format": "quint8 constants + Dequantize (MIN_FIRST)",
                                      "minimum_size": req.minimum_size})
    report.size_before, report.size_after = result.before["size_bytes"], result.after["size_bytes"]
    report.outputs = result.verification
    report.warnings.extend(result.notes)
    return report
