"""``quantize``: weights-only, dynamic, static (calibrated) and float16 quantization, with a
report of size, latency and error against the float model.

ONNX goes through onnxruntime.quantization (or NNCF, for OpenVINO), Keras/SavedModel through the TFLite converter,
GraphDef through the ``quantize_weights`` transform.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from shipyard import guard
from shipyard.errors import ModelLoadError, ShipyardError, UnsupportedError, UsageError
from shipyard.model import Model
from shipyard.quantize.report import QuantizeReport
from shipyard.quantize.request import (
    Request,
    SlowerThanFloat,
    calibration_source,
    check_speed,
    finish,
    measure,
    samples_and_labels,
)
from shipyard.sniff import open_model
from shipyard.verify import Verification

__all__ = ["ENGINES", "MODES", "Request", "quantize_model"]

MODES = ("weights", "dynamic", "static", "float16")
ENGINES = ("onnxruntime", "nncf")  # for ONNX; Keras/SavedModel go through the TFLite converter


def quantize_model(path: str | Path, out: str | Path, req: Request) -> QuantizeReport:
    """Quantize, judge against the float model with the accuracy budget, and write the result
    only when it is inside the budget (or ``req.force``). The tool for the model's format is the
    one its registry declaration names (``quantizer``)."""
    from shipyard.atomic import check_output_path
    from shipyard.formats import capability

    if req.mode not in MODES:
        raise UsageError(f"unknown mode '{req.mode}'", hint="modes: " + ", ".join(MODES))
    model = open_model(path)
    out_path = check_output_path(Path(out), model.path)
    if req.engine not in ENGINES:
        raise UsageError(f"unknown quantization engine '{req.engine}'", hint="engines: " + ", ".join(ENGINES))
    quantize = capability(model.format, "quantizer")
    if req.engine == "nncf":
        from shipyard.quantize.nncf_quant import quantize_nncf, writes_ir

        if writes_ir(out_path):  # an OpenVINO IR, from any model OpenVINO reads; its .bin is an output too
            from shipyard.formats import files_of
            from shipyard.formats.openvino_ir import weights_path

            check_output_path(weights_path(out_path), *files_of(model.path, model.format))
            return quantize_nncf(model, out_path, req)
        if quantize is not quantize_onnx:
            raise UsageError(f"{model.path}: the nncf engine quantizes ONNX models, not {model.format}",
                             hint="convert it first (shipyard convert MODEL --to onnx -o model.onnx), or name the "
                                  "output model_int8.xml for an OpenVINO IR of any model OpenVINO reads")
    if quantize is None:
        raise _not_quantizable(model, req)
    return quantize(model, out_path, req)


def _not_quantizable(model: Model, req: Request) -> ShipyardError:
    from shipyard.formats import registry

    if model.format == "tflite":
        return UsageError(f"{model.path}: a TFLite file is already converted; quantize the model it came from",
                          hint=f"shipyard quantize model.keras|saved_model/|frozen.pb --mode {req.mode} -o model_int8.tflite")
    words = [f.word for f in registry.FORMATS.values() if f.quantizer]
    return UnsupportedError(f"{model.path}: quantize works on {', '.join(words[:-1])} and {words[-1]} models, "
                            f"not {model.format}", hint="convert it to ONNX first")


def quantize_onnx(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    """ONNX: onnxruntime.quantization, or NNCF (``--engine nncf``)."""
    if req.engine == "nncf":
        from shipyard.quantize.nncf_quant import quantize_nncf

        return quantize_nncf(model, out_path, req)
    return _onnx(model, out_path, req)


def quantize_graphdef(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    """A GraphDef stays a GraphDef for ``--mode weights`` (quantize_weights); other modes go to TFLite."""
    if req.mode == "weights":
        return _graphdef(model, out_path, req)
    return quantize_via_tflite(model, out_path, req)


def quantize_via_tflite(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    """Keras, SavedModel (and GraphDef beyond weights-only) through the TFLite converter."""
    from shipyard.quantize.tflite import quantize_to_tflite as convert_quantized

    if out_path.suffix != ".tflite":
        hint = ("--mode weights keeps a GraphDef (quantize_weights); for ONNX int8: shipyard convert "
                f"{model.path.name} --to onnx, then quantize the .onnx" if model.format == "tf-graphdef" else None)
        raise UsageError(f"{out_path}: a {model.format} model is quantized ({req.mode}) to TFLite; "
                         "name the output *.tflite", hint=hint)
    return convert_quantized(model, out_path, req)


def _onnx(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    import shutil

    from shipyard.atomic import atomic_path
    from shipyard.formats.onnx import load_model_proto
    from shipyard.quantize import heads
    from shipyard.quantize import onnx_quant as oq
    from shipyard.quantize.search import Search
    from shipyard.timing import latency_ms
    from shipyard.verify import judge, model_outputs

    proto = load_model_proto(model, external_data=True)
    oq.check_not_quantized(proto, model.path)
    oq.check_exclude(proto, req.exclude)
    report = QuantizeReport(str(model.path), str(out_path), "onnx", req.mode)
    if model.encrypted:
        report.warnings.append(f"the quantized model {out_path} is NOT encrypted; encrypt it: shipyard protect "
                               "encrypt ... --key-file KEY (or delete it)")
    source = calibration_source(req, report)
    with tempfile.TemporaryDirectory() as work, atomic_path(out_path) as tmp:
        guard.stage("running the float model on the evaluation data")
        from shipyard.runtimes import open_runner

        with open_runner(model, threads=req.threads) as runner:
            signature = runner.signature
        feeds, labels = samples_and_labels(source, signature, req)
        report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
        _, reference = model_outputs(model, feeds, threads=req.threads)
        req.budget.check_outputs(reference)  # a per-output budget naming no output: before any trial
        guard.stage("preparing the model for quantization")
        # onnxruntime's pre-processing (BN folding, shape inference) is for static and weight-only
        # quantization; its shape annotations can trip the dynamic quantizer's own inference
        prepared = oq.prepare(proto, Path(work), optimize=req.mode in ("static", "weights"))

        parts: dict = {}  # model outputs made by a mixed-range Concat: judged part by part (quantize.heads)

        def evaluate(path: Path) -> Verification:
            try:
                _, got = model_outputs(Model("onnx", path), feeds, reference=signature, threads=req.threads)
            except ModelLoadError as exc:
                # onnxruntime's quantizer can write models onnxruntime cannot load (QDQ per-channel on a
                # Paddle export's fused batch-norm bias, on tf2onnx's transposed conv weights): a failed trial
                return Verification(req.budget, [], failures=[exc.message])
            if parts and labels is None:
                return heads.judge_parts(reference, got, req.budget, parts)
            return judge(reference, got, req.budget, labels)

        def latency(path: Path) -> float:
            return latency_ms(Model("onnx", path), feeds[0], max(req.latency_runs, 10), req.threads)

        def fall_back(why: str, gain: str):
            """Static int8's last resort: the weight-only search, recorded in the report; when it is
            inside the budget, its chosen trial (the settings and a warning say so), else None."""
            fallback = _weights_search(oq.weights_source(prepared), Path(work), feeds, evaluate, latency, req,
                                       source.measured, fallback=True)
            if fallback is None:
                return None
            report.search["weights_fallback"] = fallback.to_json()
            if not fallback.met:
                return None
            report.warnings.append(f"{why}; written with int8 weights computed in float instead: {gain} "
                                   "(--no-search to refuse rather than fall back)")
            report.settings = _weights_settings(fallback.chosen, req)
            return fallback.chosen

        opts = oq.StaticOptions(req.quant_format, "uint8" if req.quant_format == "qoperator" else "int8", "int8",
                                req.per_channel, req.calibrate_method, tuple(req.exclude))
        guard.stage(f"quantizing ({req.mode})")
        if req.mode == "static":
            trial_dir = Path(work) / "trials"
            trial_dir.mkdir()
            mixed = []
            if req.search:
                # Concats of very different ranges (a detector's boxes and scores) are kept float from
                # the start: the calibration ranges show them before any trial does
                guard.stage("calibrating")
                try:
                    ranges = heads.calibration_ranges(prepared, feeds, opts.calibrate_method,
                                                      Path(work) / f"calibration-{opts.calibrate_method}.json")
                except Exception:  # noqa: BLE001 -- an optimisation: the first trial calibrates (and reports) as before
                    ranges = {}
                mixed = [c for c in heads.mixed_range_concats(prepared, ranges) if c.node not in opts.exclude]
                parts.update(heads.output_parts(mixed, list(reference)))
                opts = oq.StaticOptions(**{**opts.__dict__, "exclude": (*opts.exclude, *(c.node for c in mixed))})
            counter = iter(range(10**9))

            def build(settings: dict, kept: tuple[str, ...]) -> Path:
                o = oq.StaticOptions(**{**settings, "exclude": tuple(settings["exclude"]) + kept})
                path = trial_dir / f"trial{next(counter)}.onnx"
                oq.quantize_static(prepared, path, feeds, o, cache=Path(work) / f"calibration-{o.calibrate_method}.json")
                return path

            variants = [v.__dict__ for v in (oq.variants(opts) if req.search else [opts])]
            candidates, producers, cost = oq.quantizable_nodes(prepared, opts) if req.search else ({}, {}, None)
            search = Search(build, evaluate, latency if req.latency_runs else None, variants, candidates,
                            max_trials=req.max_trials, max_seconds=req.max_seconds, cost=cost,
                            producers=producers, quantized=lambda p: oq.quantized_op_count(p, compute=True) > 0)
            result = search.run()
            chosen = result.chosen
            report.search = result.to_json() if req.search else None
            if report.search is not None:
                report.search["kept_from_start"] = [c.to_json() for c in mixed]
                report.search["judged_in_parts"] = {k: {"axis": a, "sizes": z} for k, (a, z) in parts.items()}
            report.settings = _static_settings(oq.StaticOptions(**chosen.settings), chosen.kept_float)
            nothing = not oq.quantized_op_count(result.trials[0].path)  # the fully quantized first try
            why = ("onnxruntime's static quantizer quantized no node of this model (its computation lives in "
                   "If/Loop subgraphs, where its calibrator records no ranges)" if nothing
                   else f"no model with int8 activations met the budget (closest: {chosen.verification.summary()}, "
                        f"{len(result.trials)} tried)" if not result.met else None)
            if req.search and why:
                # int8 weights computed in float may be inside where int8 activations are not (PP-OCR rec:
                # cosine 0.985 at best in int8, 0.997 weight-only), or where there are none (silero-vad)
                instead = fall_back(why, "smaller, not faster")
                if instead is not None:
                    chosen, nothing = instead, False
            if nothing:
                raise UnsupportedError(f"{model.path}: onnxruntime's quantizer quantized no node of this model: its "
                                       f"computation lives in If/Loop subgraphs, and onnxruntime's calibrator records "
                                       f"ranges only in the main graph (its subgraph quantizer, EnableSubgraph, then "
                                       f"fails for lack of them), so static int8 has no scales there",
                                       hint="nothing was written; --mode dynamic (no ranges needed), weights or float16 "
                                            "quantize weights inside subgraphs")
            shutil.copyfile(chosen.path, tmp)
            verification = chosen.verification
        else:
            if req.mode == "dynamic":
                report.settings = oq.quantize_dynamic(prepared, tmp, req.per_channel, req.exclude)
                if any(n.op_type == "Conv" for n in proto.graph.node):
                    report.warnings.append("dynamic quantization runs convolutions as ConvInteger, which onnxruntime "
                                           "runs slower than float on CPUs; --mode static is faster for CNNs")
            elif req.mode == "weights":
                result = _weights_search(oq.weights_source(prepared), Path(work), feeds, evaluate, latency, req,
                                         source.measured)
                report.search = result.to_json() if req.search else None
                report.settings = _weights_settings(result.chosen, req)
                shutil.copyfile(result.chosen.path, tmp)
            else:
                report.settings = oq.to_float16(prepared, tmp, req.exclude)
            verification = result.chosen.verification if req.mode == "weights" else evaluate(tmp)
        measure(report, model, Model("onnx", tmp), feeds, req)
        if req.mode == "static" and req.layers and not (report.search and report.search["sensitivity"]):
            # local noise per layer; when the search ran, its sensitivities at the outputs say more
            guard.stage("measuring per-layer quantization error")
            report.layers = oq.layer_errors(prepared, feeds[:16], opts)
        finish(report, verification, req, f"the {req.mode}-quantized model")
        if req.mode == "static":
            try:
                check_speed(report, req, "the int8 model", model, Model("onnx", tmp), feeds[0])
            except SlowerThanFloat:
                # int8 activations cost this model more than they save (an overhead-bound model, float
                # islands): int8 weights computed in float keep the file small at the float speed
                if not req.search or "weights_fallback" in (report.search or {}):
                    raise
                instead = fall_back(f"int8 activations ran slower than float here ({report.latency_after_ms:.3f} ms "
                                    f"against {report.latency_before_ms:.3f} ms)", "smaller, at the float speed")
                if instead is None:
                    raise
                shutil.copyfile(instead.path, tmp)
                report.layers = []
                measure(report, model, Model("onnx", tmp), feeds, req)
                finish(report, instead.verification, req, "the weight-only int8 model")
                check_speed(report, req, "the weight-only int8 model", model, Model("onnx", tmp), feeds[0])
    return report


def _weights_search(prepared: Path, work: Path, feeds: list[dict], evaluate, latency, req: Request,
                    measured: bool, fallback: bool = False):
    """Weight-only int8 (int8 weights, float compute), searched like static int8 when it misses the
    budget: with bias correction and without (when the data are real: random data would correct
    biases towards noise), then the weights whose rounding hurts the outputs most kept in float.
    ``fallback`` (static's last resort): None when no weight is large enough to store as int8."""
    import onnx

    from shipyard.formats.onnx import flops_by_node
    from shipyard.quantize import onnx_quant as oq
    from shipyard.quantize.onnx_weights import weighted_nodes
    from shipyard.quantize.search import Search

    proto = onnx.load(str(prepared), load_external_data=False)
    holders = {n: op for n, op in weighted_nodes(proto, req.minimum_size).items() if n not in req.exclude}
    if fallback and not holders:
        return None
    means = None
    if measured:
        from shipyard.quantize.bias_correction import conv_input_means

        guard.stage("measuring the convolutions' input means (bias correction)")
        means = conv_input_means(prepared, feeds, threads=req.threads)
    trial_dir = work / "weight-trials"
    trial_dir.mkdir(exist_ok=True)
    counter = iter(range(10**9))

    def build(settings: dict, kept: tuple[str, ...]) -> Path:
        path = trial_dir / f"trial{next(counter)}.onnx"
        oq.quantize_weights_only(prepared, path, req.minimum_size, (*req.exclude, *kept),
                                 means if settings["bias_correction"] else None)
        return path

    variants = [{"bias_correction": True}, {"bias_correction": False}] if means else [{"bias_correction": False}]
    candidates, cost = {}, None
    if req.search:
        candidates = holders
        flops = flops_by_node(proto)
        cost = {n: flops.get(n) for n in candidates}
    else:
        variants = variants[:1]
    return Search(build, evaluate, latency if req.latency_runs else None, variants, candidates,
                  max_trials=req.max_trials, max_seconds=req.max_seconds, cost=cost,
                  quantized=lambda p: oq.quantized_op_count(p) > 0).run()


def _weights_settings(chosen, req: Request) -> dict:
    from shipyard.quantize import onnx_quant as oq

    return {"format": "weight-only int8 (cast to float at load, float compute)", "weights": "int8",
            "per_channel": True, "quantized_tensors": oq.quantized_op_count(chosen.path),
            "minimum_size": req.minimum_size, "bias_correction": chosen.settings["bias_correction"],
            "kept_float": list(chosen.kept_float),
            "why": "int8 weights cast to float when the model loads: a quarter of the file at float speed"}


def _static_settings(o, kept: tuple[str, ...]) -> dict:
    why = ("QOperator u8/s8 (QLinearConv) is the form onnxruntime runs fastest on x86 CPUs; "
           "QDQ s8/s8 runs no faster than float there" if o.quant_format == "qoperator"
           else "QDQ keeps the float graph visible to other runtimes (TensorRT, QNN)")
    return {"format": "QOperator" if o.quant_format == "qoperator" else "QDQ", "activations": o.activation_type,
            "weights": o.weight_type, "per_channel": o.per_channel, "calibration_method": o.calibrate_method,
            "kept_float": list(o.exclude) + list(kept), "why": why}


def _graphdef(model: Model, out_path: Path, req: Request) -> QuantizeReport:
    from shipyard.formats import tf_graph

    graph_def, _ = tf_graph.load(model)
    if any(n.op in ("Dequantize", "QuantizeV2", "QuantizedConv2D") for n in graph_def.node):
        raise UsageError(f"{model.path}: the graph is already quantized (it has Dequantize nodes)")
    import shutil

    from shipyard.atomic import atomic_path
    from shipyard.formats import handler
    from shipyard.passes.pipeline import transform_model
    from shipyard.verify import verify

    report = QuantizeReport(str(model.path), str(out_path), "tf-graphdef", "weights",
                            settings={"format": "quint8 constants + Dequantize (MIN_FIRST)",
                                      "minimum_size": req.minimum_size})
    with tempfile.TemporaryDirectory() as work:
        candidate = Path(work) / f"quantized{out_path.suffix}"
        result = transform_model(model.path, f"quantize_weights(minimum_size={req.minimum_size})", candidate,
                                 verify=False)
        report.size_before, report.size_after = result.before["size_bytes"], result.after["size_bytes"]
        report.warnings.extend(result.notes)
        source = calibration_source(req, report)
        feeds, labels = samples_and_labels(source, handler(model.format).signature(model), req)
        report.calibration = {"source": source.description, "samples": len(feeds), "measured": source.measured}
        guard.stage("judging the quantized graph against the float one")
        finish(report, verify(model, Model("tf-graphdef", candidate), feeds, req.budget, labels), req,
               "the weight-quantized graph")
        with atomic_path(out_path) as tmp:
            shutil.copyfile(candidate, tmp)
    return report
