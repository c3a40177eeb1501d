"""A quantization request and what every engine does with it: read its calibration data,
judge the result against its accuracy budget, measure its size and latency. Engine modules
(onnx_quant, tflite, nncf_quant) and the command share these; they import this module, never
the package, so the package can import them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shipyard import guard
from shipyard.errors import InputError, ShipyardError, UsageError
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
    max_seconds: float | None = 240.0  # the search's time box: no trial starts after it (None: no limit)


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


SLOWER_MARGIN = 0.10  # median latencies closer than this are the noise of a shared CPU, not "slower"
# ...and so is a difference below this per call: a tiny model's 0.016 vs 0.019 ms flips with the load
# (CI saw it), and nobody keeps a float model to save 3 us
SLOWER_FLOOR_MS = 0.05


class SlowerThanFloat(ShipyardError):
    """The quantized model is inside the budget but runs slower than its float model: int8 exists
    to be faster, so it is not written (unless ``--force``); the float model is the one to ship."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, result: QuantizeReport | None = None):
        super().__init__(message, hint=hint)
        self.result = result


def check_speed(report: QuantizeReport, req: Request, what: str, ref_model: Model, new_model: Model, feed) -> None:
    """Refuse (or, with --force, warn about) a quantized model measured slower than float: on a
    tiny model the Quantize/DequantizeLinear pairs around the ops onnxruntime has no int8 kernel
    for, and its layout Transposes, cost more than int8 arithmetic saves. A first verdict of
    "slower" is measured twice more, the two models alternating, and each keeps its best median:
    a burst of load on a shared CPU must not refuse a model that is in fact faster."""
    from shipyard.timing import latency_ms

    before, after = report.latency_before_ms, report.latency_after_ms
    def faster_or_noise(before: float, after: float) -> bool:
        return after <= before * (1 + SLOWER_MARGIN) or after - before < SLOWER_FLOOR_MS

    if not (req.latency_runs and before and after) or faster_or_noise(before, after):
        return
    for _ in range(2):
        before = min(before, latency_ms(ref_model, feed, req.latency_runs, req.threads))
        after = min(after, latency_ms(new_model, feed, req.latency_runs, req.threads))
    report.latency_before_ms, report.latency_after_ms = before, after
    if faster_or_noise(before, after):
        return
    message = (f"{what} is inside the accuracy budget but runs slower than the float model ({after:.3f} ms against "
               f"{before:.3f} ms, best median of 3x{req.latency_runs} runs, batch 1): keep the float model")
    if req.force:
        report.warnings.append("written with --force although it " + message.split(" is inside the accuracy budget but ", 1)[1])
        return
    raise SlowerThanFloat(message, result=report,
                          hint="nothing was written; ship the float model (or --force to write the int8 one anyway)")


def warn_if_not_smaller(report: QuantizeReport) -> None:
    """Say so when the quantized file is not smaller than the float one. basic-pitch: 36 K weights,
    half of them a filter bank that stays float, in a graph whose node records (tf2onnx's long names,
    the quantize/dequantize pairs around float nodes) outweigh what int8 saves."""
    from shipyard.report.numbers import size

    # measured again (a model replaced by the weight-only fallback): only the written file's verdict stays
    report.warnings = [w for w in report.warnings if not w.startswith(NOT_SMALLER)]
    if report.size_before and report.size_after >= report.size_before:
        report.warnings.append(f"{NOT_SMALLER} ({size(report.size_after)} against {size(report.size_before)}): "
                               "its graph outweighs what int8 saves on its weights")


NOT_SMALLER = "the quantized file is not smaller than the float one"


def measure(report: QuantizeReport, ref_model: Model, new_model: Model, feeds, req: Request,
             backend: str | None = None) -> None:
    """Size and latency of ``new_model`` against ``ref_model``."""
    from shipyard.formats import files_of
    from shipyard.inspection import inspect_model
    from shipyard.timing import latency_ms

    guard.stage("measuring the quantized model")
    report.size_before = inspect_model(ref_model).size_bytes
    report.size_after = sum(p.stat().st_size for p in files_of(new_model.path, new_model.format))
    warn_if_not_smaller(report)
    if req.latency_runs:
        report.latency_before_ms = latency_ms(ref_model, feeds[0], req.latency_runs, req.threads, backend)
        report.latency_after_ms = latency_ms(new_model, feeds[0], req.latency_runs, req.threads, backend)
