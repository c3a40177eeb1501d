"""int8 for OpenVINO through NNCF: ``nncf.quantize`` on the ONNX graph, written back as ONNX.

NNCF's ONNX backend inserts QuantizeLinear/DequantizeLinear pairs that OpenVINO fuses into int8
kernels: the artifact stays an ONNX file (shipped, verified and served like any other), and on
OpenVINO it runs about 2x faster than float (Keras MobileNetV2, 1 thread: 8.6 -> 3.8 ms; the
same model quantized to OpenVINO IR ran 4.8 ms). onnxruntime also runs it, but without the
speed-up (QDQ s8s8 on x86: see onnx_quant.py). When the default settings miss the accuracy budget,
the variants below are tried in order, the way NNCF's accuracy-control loop would, and the
first inside the budget is kept.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from shipyard import guard
from shipyard.deps import all_output_silenced, require
from shipyard.model import Model
from shipyard.quantize.report import QuantizeReport
from shipyard.verify import Verification

# (label, nncf.quantize keyword arguments as strings resolved against the nncf module)
VARIANTS = (
    ("performance preset", {}),
    ("mixed preset (asymmetric activations)", {"preset": "MIXED"}),
    ("mixed preset, full bias correction", {"preset": "MIXED", "fast_bias_correction": False}),
)


def _kwargs(nncf, spec: dict) -> dict:
    out = dict(spec)
    if "preset" in out:
        out["preset"] = getattr(nncf.QuantizationPreset, out["preset"])
    return out


def quantize_nncf(model: Model, out_path: Path, req) -> QuantizeReport:
    """Static int8 of an ONNX model with NNCF, judged on OpenVINO against the float model."""
    from shipyard.atomic import atomic_path
    from shipyard.errors import UsageError
    from shipyard.formats.onnx import load_model_proto
    from shipyard.quantize.onnx_quant import check_not_quantized, prepare
    from shipyard.quantize.request import calibration_source, finish, measure, samples_and_labels
    from shipyard.runtimes import open_runner
    from shipyard.verify import judge, model_outputs

    if req.mode != "static":
        raise UsageError(f"the nncf engine does static (calibrated) int8 only, not --mode {req.mode}")
    nncf = require("nncf", "Quantizing for OpenVINO with NNCF")
    require("openvino", "Judging an NNCF-quantized model on OpenVINO")
    onnx = require("onnx", "Quantizing an ONNX model")
    proto = load_model_proto(model, external_data=True)
    check_not_quantized(proto, model.path)
    report = QuantizeReport(str(model.path), str(out_path), "onnx", req.mode)
    source = calibration_source(req, report)
    with open_runner(model, threads=req.threads) as runner:
        signature = runner.signature
    feeds, labels = samples_and_labels(source, signature, req)
    report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
    guard.stage("running the float model on the evaluation data")
    _, reference = model_outputs(model, feeds, threads=req.threads)
    ignored = None
    if req.exclude:
        ignored = nncf.IgnoredScope(names=list(req.exclude))
    dataset = nncf.Dataset(feeds)
    trials = []
    variants = VARIANTS if req.search else VARIANTS[:1]
    with tempfile.TemporaryDirectory(prefix="shipyard-nncf-") as work, atomic_path(out_path) as tmp:
        # The graph onnxruntime's quantizer gets too: weights held in Constant nodes (Paddle exports)
        # lifted into initializers, which NNCF's ONNX backend otherwise neither quantizes nor stores
        # as int8 (PP-OCR cls: 1.15x the float size, accuracy 100% -> 95%), and batch norms folded
        # into the convolutions (after prepare: 0.65x, accuracy 100% -> 100%).
        guard.stage("preparing the model for quantization")
        proto = onnx.load(str(prepare(proto, Path(work))))
        best: tuple[float, Path, Verification, str] | None = None
        for i, (label, spec) in enumerate(variants):
            guard.stage(f"quantizing with NNCF ({label})")
            try:
                with all_output_silenced():  # NNCF draws progress bars and logs on both streams
                    quantized = nncf.quantize(proto, dataset, subset_size=len(feeds), ignored_scope=ignored,
                                              **_kwargs(nncf, spec))
            except Exception as exc:  # noqa: BLE001 - NNCF raises its own and engine errors alike
                from shipyard.runtimes.openvino import first_reason

                trials.append({"settings": label, "error": first_reason(exc)})
                continue
            path = Path(work) / f"trial{i}.onnx"
            onnx.save(quantized, str(path))
            guard.stage("judging the NNCF model on OpenVINO")
            _, got = model_outputs(Model("onnx", path), feeds, reference=signature, backend="openvino",
                                   threads=req.threads)
            verdict = judge(reference, got, req.budget, labels)
            trials.append({"settings": label, "passed": verdict.passed, "failures": list(verdict.failures)})
            score = 0.0 if verdict.passed else verdict.score()  # lower is better
            if best is None or score < best[0]:
                best = (score, path, verdict, label)
            if verdict.passed:
                break
        if best is None:
            from shipyard.errors import UnsupportedError

            raise UnsupportedError(f"{model.path}: NNCF could not quantize the model ({trials[-1]['error']})",
                                   hint="nothing was written; try --engine onnxruntime")
        _, chosen, verification, label = best
        shutil.copyfile(chosen, tmp)
        report.settings = {"engine": "nncf", "format": "QDQ (ONNX)", "runs_on": "openvino", "settings": label,
                           "kept_float": list(req.exclude),
                           "why": "NNCF's QDQ graph is fused into int8 kernels by OpenVINO; run it with --backend openvino"}
        report.search = {"trials": trials, "chosen": {"settings": {"nncf": label}}, "sensitivity": [],
                         "kept_float": []} if req.search else None
        measure(report, model, Model("onnx", tmp), feeds, req, backend="openvino")
        finish(report, verification, req, "the NNCF-quantized model")
    return report
