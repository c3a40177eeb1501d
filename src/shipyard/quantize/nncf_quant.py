"""int8 for OpenVINO through NNCF, in the form the output's name asks for.

``-o model.onnx``: ``nncf.quantize`` on the ONNX graph (NNCF's ONNX backend), written back as ONNX
with QuantizeLinear/DequantizeLinear pairs that OpenVINO fuses into int8 kernels; the artifact
stays an ONNX file (shipped, verified and served like any other). On OpenVINO it runs about 2x
faster than float (Keras MobileNetV2, 1 thread: 8.6 -> 3.8 ms). onnxruntime also runs it, but
without the speed-up (QDQ s8s8 on x86: see onnx_quant.py).

``-o model.xml``: NNCF's OpenVINO backend on the model as OpenVINO reads it (ONNX, TFLite,
SavedModel, GraphDef), written as an OpenVINO IR (.xml + .bin). Its int8 graph is OpenVINO's own,
with FakeQuantize nodes where OpenVINO's CPU plugin has int8 kernels, and the plugin fuses all of
them: Keras ResNet50 at 2 threads ran 0.6-0.8x the latency of the QDQ ONNX above and 0.93-1.0x
that of the TFLite converter's int8 file, all on OpenVINO (paired bursts), and became ``ship
--optimize``'s choice at 7.2x ``tf.function`` (docs/bench.md). Which form is faster depends on the
model (MobileNetV2: the QDQ ONNX at one thread), so ``ship --optimize`` makes and measures both.

When the default settings miss the accuracy budget, the variants below are tried in order, the
way NNCF's accuracy-control loop would, and the first inside the budget is kept.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipyard import guard
from shipyard.deps import all_output_silenced, require
from shipyard.formats import registry
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


def writes_ir(out_path: Path) -> bool:
    """An output named like an OpenVINO IR (.xml) asks for NNCF's OpenVINO backend."""
    return out_path.suffix == registry.get("openvino-ir").suffix


@dataclass
class _Form:
    """What differs between NNCF's two backends: the graph NNCF quantizes, how its calibration
    samples are fed, and how a quantized graph is written and read back."""
    graph: object
    dataset: object
    save: Callable[[object, Path], Model]
    suffix: str
    description: dict


def _onnx_form(nncf, model: Model, feeds, work: Path) -> _Form:
    onnx = require("onnx", "Quantizing an ONNX model")
    from shipyard.formats.onnx import load_model_proto
    from shipyard.quantize.onnx_quant import check_not_quantized, prepare

    proto = load_model_proto(model, external_data=True)
    check_not_quantized(proto, model.path)
    # The graph onnxruntime's quantizer gets too: weights held in Constant nodes (Paddle exports)
    # lifted into initializers, which NNCF's ONNX backend otherwise neither quantizes nor stores
    # as int8 (PP-OCR cls: 1.15x the float size, accuracy 100% -> 95%), and batch norms folded
    # into the convolutions (after prepare: 0.65x, accuracy 100% -> 100%).
    guard.stage("preparing the model for quantization")
    proto = onnx.load(str(prepare(proto, work)))

    def save(quantized, path: Path) -> Model:
        onnx.save(quantized, str(path))
        return Model("onnx", path)

    return _Form(proto, nncf.Dataset(feeds), save, ".onnx",
                 {"format": "QDQ (ONNX)",
                  "why": "NNCF's QDQ graph is fused into int8 kernels by OpenVINO; run it with --backend openvino"})


def _ir_form(nncf, model: Model, feeds, signature) -> _Form:
    ov = require("openvino", "Quantizing for OpenVINO with NNCF")
    from shipyard.errors import UsageError
    from shipyard.formats.openvino_ir import graph_of, signature_of
    from shipyard.verify import adapt_feeds

    if model.format not in registry.formats_by_engine()["openvino"]:
        raise UsageError(f"{model.path}: OpenVINO does not read {registry.get(model.format).word} models, so NNCF "
                         "cannot make an OpenVINO IR of it",
                         hint="convert it first: shipyard convert MODEL --to onnx -o model.onnx")
    graph = graph_of(model)
    found = sorted({op.get_type_name() for op in graph.get_ordered_ops()} & {"FakeQuantize", "FakeConvert"})
    if found:
        raise UsageError(f"{model.path}: the model is already quantized (OpenVINO reads {', '.join(found)} nodes in it)",
                         hint="quantize the float model it came from")
    ov_signature = signature_of(graph)

    def save(quantized, path: Path) -> Model:
        # float leftovers (the first layer's padding, biases of float-kept layers) stay float32:
        # what is judged is what is written
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        return Model("openvino-ir", path)

    # OpenVINO names a TFLite or SavedModel input its own way: the feeds are paired by the one rule
    dataset = nncf.Dataset(feeds, lambda f: adapt_feeds(f, signature, ov_signature))
    return _Form(graph, dataset, save, registry.get("openvino-ir").suffix,
                 {"format": "OpenVINO IR (int8)",
                  "why": "NNCF's OpenVINO backend: every quantized layer runs on an int8 kernel of OpenVINO's CPU plugin"})


def quantize_nncf(model: Model, out_path: Path, req) -> QuantizeReport:
    """Static int8 with NNCF (QDQ ONNX, or an OpenVINO IR for a .xml output), judged on OpenVINO
    against the float model."""
    from shipyard.errors import UnsupportedError, UsageError
    from shipyard.formats import copy_model
    from shipyard.formats.openvino_ir import first_reason
    from shipyard.quantize.request import calibration_source, finish, measure, samples_and_labels
    from shipyard.runtimes import open_runner
    from shipyard.verify import judge, model_outputs

    if req.mode != "static":
        raise UsageError(f"the nncf engine does static (calibrated) int8 only, not --mode {req.mode}")
    nncf = require("nncf", "Quantizing for OpenVINO with NNCF")
    require("openvino", "Judging an NNCF-quantized model on OpenVINO")
    ir = writes_ir(out_path)
    report = QuantizeReport(str(model.path), str(out_path), "openvino-ir" if ir else "onnx", req.mode)
    source = calibration_source(req, report)
    with open_runner(model, threads=req.threads) as runner:
        signature = runner.signature
    feeds, labels = samples_and_labels(source, signature, req)
    report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
    guard.stage("running the float model on the evaluation data")
    _, reference = model_outputs(model, feeds, threads=req.threads)
    ignored = nncf.IgnoredScope(names=list(req.exclude)) if req.exclude else None
    trials = []
    variants = VARIANTS if req.search else VARIANTS[:1]
    with tempfile.TemporaryDirectory(prefix="shipyard-nncf-") as work:
        form = _ir_form(nncf, model, feeds, signature) if ir else _onnx_form(nncf, model, feeds, Path(work))
        best: tuple[float, Model, Verification, str] | None = None
        for i, (label, spec) in enumerate(variants):
            guard.stage(f"quantizing with NNCF ({label})")
            try:
                with all_output_silenced():  # NNCF draws progress bars and logs on both streams
                    quantized = nncf.quantize(form.graph, form.dataset, subset_size=len(feeds), ignored_scope=ignored,
                                              **_kwargs(nncf, spec))
            except Exception as exc:  # noqa: BLE001 - NNCF raises its own and engine errors alike
                trials.append({"settings": label, "error": first_reason(exc)})
                continue
            trial = form.save(quantized, Path(work) / f"trial{i}{form.suffix}")
            guard.stage("judging the NNCF model on OpenVINO")
            _, got = model_outputs(trial, feeds, reference=signature, backend="openvino", threads=req.threads)
            verdict = judge(reference, got, req.budget, labels)
            trials.append({"settings": label, "passed": verdict.passed, "failures": list(verdict.failures)})
            score = 0.0 if verdict.passed else verdict.score()  # lower is better
            if best is None or score < best[0]:
                best = (score, trial, verdict, label)
            if verdict.passed:
                break
        if best is None:
            raise UnsupportedError(f"{model.path}: NNCF could not quantize the model ({trials[-1]['error']})",
                                   hint="nothing was written; try --engine onnxruntime")
        _, chosen, verification, label = best
        report.settings = {"engine": "nncf", **form.description, "runs_on": "openvino", "settings": label,
                           "kept_float": list(req.exclude)}
        report.search = {"trials": trials, "chosen": {"settings": {"nncf": label}}, "sensitivity": [],
                         "kept_float": []} if req.search else None
        measure(report, model, chosen, feeds, req, backend="openvino")
        finish(report, verification, req, "the NNCF-quantized model")
        copy_model(chosen, out_path)
    return report
