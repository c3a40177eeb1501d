"""A quantization request and what every engine does with it: read its calibration data,
judge the result against its accuracy budget, measure its size and latency. Engine modules
(onnx_quant, tflite, nncf_quant) and the command share these; they import this module, never
the package, so the package can import them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shipyard import guard
from shipyard.errors import InputError, UsageError
from shipyard.model import Model
from shipyard.quantize.report import QuantizeReport
from shipyard.quantize.search import MIN_SAMPLES
from shipyard.verify import Budget, Verification, VerificationError


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
    budget: Budget = field(default_factory=Budget)
    search: bool = True    # keep nodes in float / try other settings until the budget holds
    force: bool = False    # write the model even when it misses the budget
    engine: str = "onnxruntime"  # ONNX static int8: onnxruntime's quantizer, or "nncf" (QDQ for OpenVINO)
    max_trials: int = 400  # quantized models the accuracy search may build (ship --optimize caps it)


def calibration_source(req: Request, report: QuantizeReport):
    """The calibration (and evaluation) data; a warning in the report when it is random."""
    from shipyard.data import open_source

    source = open_source(req.calibration, count=min(req.samples, 32), image_options=req.image_options,
                         mapping=req.mapping)
    if not source.measured:
        report.warnings.append("calibrated and evaluated on random data: accuracy is not measured; "
                               "give --calibration with real samples")
    return source


def samples_and_labels(source, signature, req: Request) -> tuple[list[dict], np.ndarray | None]:
    """The calibration/evaluation samples and their labels, checked against the search's needs."""
    from shipyard.data import take

    feeds = take(source, signature, req.samples)
    labels = None if source.labels is None else np.asarray(source.labels).reshape(-1)[: len(feeds)]
    if req.mode == "static" and req.search and len(feeds) < MIN_SAMPLES:
        raise UsageError(f"{source.description}: {len(feeds)} sample(s); the accuracy check of a static quantization "
                         f"needs at least {MIN_SAMPLES} (100 or more judge a 1% agreement budget reliably)",
                         hint="give more calibration samples, or --no-search to quantize with the settings as given")
    if labels is not None and len(labels) < len(feeds):
        raise InputError(f"{source.description}: {len(labels)} labels for {len(feeds)} samples")
    return feeds, labels


def finish(report: QuantizeReport, verification: Verification, req: Request, what: str) -> None:
    """Record the verdict; raise (nothing written) when the budget is missed without --force."""
    report.budget = req.budget.to_json()
    report.verification = verification.to_json()
    report.outputs = [d.to_json() for d in verification.outputs]
    if verification.accuracy is not None:
        a = verification.accuracy
        report.accuracy = {"output": a["output"], "samples": a["samples"], "float": a["reference"],
                           "quantized": a["candidate"]}
    if verification.passed:
        return
    if req.force:
        report.warnings.append("written with --force although it misses the accuracy budget: "
                               + "; ".join(verification.failures))
        return
    raise VerificationError(what, verification, result=report,
                            hint="nothing was written; the best figures reached are above. Keep more nodes in float "
                                 "(--exclude), give more representative --calibration data, relax --accuracy-budget, "
                                 "or write it anyway with --force")


def measure(report: QuantizeReport, ref_model: Model, new_model: Model, feeds, req: Request,
             backend: str | None = None) -> None:
    """Size and latency of ``new_model`` against ``ref_model``."""
    from shipyard.inspection import inspect_model
    from shipyard.timing import latency_ms

    guard.stage("measuring the quantized model")
    report.size_before = inspect_model(ref_model).size_bytes
    report.size_after = new_model.path.stat().st_size
    if req.latency_runs:
        report.latency_before_ms = latency_ms(ref_model, feeds[0], req.latency_runs, req.threads, backend)
        report.latency_after_ms = latency_ms(new_model, feeds[0], req.latency_runs, req.threads, backend)
