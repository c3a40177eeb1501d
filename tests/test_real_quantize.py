"""Static int8 quantization with the accuracy budget on the real-model corpus (tests/corpus.py).

Each quantizable model is calibrated and judged on realistic samples (tests/corpus_calibration.py),
with the default budget (agreement >= 99.0% — top-1 for class scores, thresholded decisions for probability
maps — and cosine >= 0.99 on every output vs float, or an
accuracy drop <= 1 point with labels). The quantized model must be inside the budget, smaller than
float, and still do the model's task (the same check as the float model in test_real_models.py).
A model the search cannot bring inside the budget must fail cleanly: VerificationError, nothing
written; each such case says what the best trial reached.

ONNX models are quantized directly, TFLite models through their ONNX conversion (shipyard does not
re-quantize a TFLite file), Keras / SavedModel models to TFLite with TensorFlow's converter.
Not quantizable here: fer-tflite-int8 (already int8), silero-vad-jit (TorchScript: quantize its
ONNX export, silero-vad-onnx).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from corpus import CORPUS, RealModel
from corpus_calibration import calibration
from shipyard.errors import UnsupportedError
from shipyard.quantize import Request, quantize_model
from shipyard.runtimes import open_runner
from shipyard.verify import VerificationError
from test_real_models import artifact_feeds

# Models the default budget cannot be met on (the test asserts the clean failure), with what the
# search reached. Their outputs are regressions or maps whose last axis is coordinates, anchors or
# pixels, not class scores: the budget's top-1 agreement there is an argmax over coordinates, anchors
# or columns, which float noise of 1e-5 of the output's std already changes (blazeface regressors: 87%
# agreement; ocr-det probability map: 2.4%), so no int8 model, however many nodes stay float, can
# reach 99%. (nudenet's output0 was one of them until its boxes/scores Concat was found from the
# calibration ranges and its parts judged apart: test_mixed_range_concat_is_kept_float_from_the_start.) (model id -> (run the search in the test?, what it reached))
OUT_OF_BUDGET = {
    # (blazeface-tflite was here: the search missed after 326 trials / 241 s at classificators[512:896]
    # cosine 0.9886; the search by stretches of the graph meets the budget in 38 trials:
    # test_blazeface_meets_the_budget_by_keeping_a_stretch_float.)
    # Default settings: cosine 0.844, top-1 82.8% (a real loss, not only the metric), yet written with
    # --force the model still finds the three printed lines (precision 1.0, blank bands 0.0). The
    # search ran past 190 trials (> 15 min) without meeting it; the test asserts the clean failure without it.
    # Time-boxed (240 s) it stops after 27 trials at cosine 0.894 (benchmarks/quantize_corpus.py).
    # Searched, it then falls back to int8 weights computed in float, which are inside (tested with
    # --mode weights: test_weight_only_int8_keeps_pp_ocr_det_inside_the_budget); without the search,
    # as here, there is no fallback.
    "ocr-det-onnx": (False, ("sigmoid_0.tmp_0 [288, 480] probability map: cosine 0.844, top-1 82.8% (1e-5 noise "
                            "alone: 2.4%)")),
}
# (ocr-rec-onnx was here: with int8 activations its loss is spread over the whole graph — no stretch
# of it kept in float closes 1% of the gap, the first or second half float: cosine 0.963 / 0.961 — and
# the search misses at cosine 0.98; it now falls back to int8 weights computed in float, bias-corrected,
# which are inside: test_static_int8_falls_back_to_weight_only_when_out_of_reach.
# basic-pitch x3 were here: their int8 loss is the constant-Q filter bank before the log, which only
# comes back when all of it is float; the search now tries the front of the graph in float:
# test_a_float_front_is_found_when_no_stretch_helps.)
OUT_OF_BUDGET.update({
    # The TFLite search met it (cosine 0.99966, 62 trials) with its float share counted in FLOPs; that
    # counting is off again for TFLite (it changed the docs' Keras example), and by nodes the float
    # filter bank is past half the graph.
    "basic-pitch-savedmodel": (True, "TFLite int8: the float front is past half of its nodes"),
})
# Inside the budget, but the int8 file is not smaller than float: basic-pitch has 36 K weights, half of
# them the filter bank that stays float, in a graph whose node records (tf2onnx's long names, the
# quantize/dequantize pairs around the float front) outweigh what int8 saves. quantize says so.
NOT_SMALLER = {"basic-pitch-onnx", "basic-pitch-tflite"}
# Models onnxruntime's quantizer leaves unquantized: without the search shipyard refuses (UnsupportedError,
# nothing written); with it, int8 weights computed in float are its last resort.
NOTHING_TO_QUANTIZE = {
    "silero-vad-onnx": "every weight lives in Constant nodes inside If subgraphs (8 kHz / 16 kHz branches); shipyard "
                       "lifts them into the subgraphs' initializers, but onnxruntime's calibrator records ranges only "
                       "in the main graph and its static subgraph quantizer (EnableSubgraph) then fails ('Unable to "
                       "handle object of type numpy.int64'): no static int8 scales exist for them. Dynamic mode can: "
                       "test_dynamic_quantization_enters_if_subgraphs",
}
FAST = {"ocr-cls-onnx", "fer-keras-h5", "silero-vad-onnx", "nudenet-yolov8n-onnx", "ocr-det-onnx"}
QUANTIZABLE = ["fer-keras-h5", "silero-vad-onnx", "basic-pitch-savedmodel", "basic-pitch-tflite", "basic-pitch-onnx",
               "nudenet-yolov8n-onnx", "blazeface-tflite", "face-mesh-tflite", "ocr-det-onnx", "ocr-rec-onnx",
               "ocr-cls-onnx"]


def calibration_file(model_id: str, tmp_path: Path) -> Path:
    """The corpus model's calibration set (tests/corpus_calibration.py) as the .npz quantize reads."""
    path = tmp_path / "calibration.npz"
    np.savez(path, **calibration(model_id))
    return path


def source_for_quantize(model: RealModel, work: Path) -> tuple[Path, dict[str, str]]:
    """The file shipyard quantizes, and {its output name: the corpus model's output name}."""
    if model.format != "tflite":
        return model.path, {}
    from shipyard.convert.api import convert_model

    result = convert_model(str(model.path), "onnx", work / f"{model.id}.onnx", feeds=model.inputs())
    assert result.verification.passed
    return result.artifact.path, {p.other: p.ref for p in result.verification.pairing}


def quantized_path(model: RealModel, work: Path) -> Path:
    return work / (f"{model.id}-int8.tflite" if model.format in ("keras", "tf-savedmodel") else f"{model.id}-int8.onnx")


def run_task(model: RealModel, path: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    """The corpus inputs through the quantized model, outputs under the corpus model's names
    (by position where a converter renamed them)."""
    feeds = model.inputs()
    with open_runner(path) as runner:
        got = runner.run(artifact_feeds(feeds, runner.signature.inputs))
    return {names.get(k, k): v for k, v in got.items()}


# The other models' searches take 5-15 minutes each on two cores (hundreds of trials): they run
# with SHIPYARD_CORPUS_FULL=1 and in benchmarks/quantize_corpus.py, not in the 30-minute CI run.
FULL = pytest.mark.skipif(not os.environ.get("SHIPYARD_CORPUS_FULL"),
                          reason="a search of several minutes: set SHIPYARD_CORPUS_FULL=1")


@pytest.mark.parametrize("model_id", [
    pytest.param(i, id=i, marks=[] if i in FAST else [pytest.mark.slow, FULL]) for i in QUANTIZABLE])
def test_static_quantization_keeps_the_task(model_id: str, tmp_path):
    model = CORPUS[model_id]
    calib = tmp_path / "calibration.npz"
    arrays = calibration(model_id)
    assert len(next(iter(arrays.values()))) >= 32
    np.savez(calib, **arrays)
    source, names = source_for_quantize(model, tmp_path)
    out = quantized_path(model, tmp_path)
    req = Request(mode="static", calibration=str(calib), latency_runs=0, layers=False)
    if model_id in NOTHING_TO_QUANTIZE:
        req.search = False
        with pytest.raises(UnsupportedError, match="quantized no node"):
            quantize_model(source, out, req)
        assert not list(tmp_path.glob("*int8*"))
        req.search = True  # the search's last resort: int8 weights (inside the If branches), float compute
        report = quantize_model(source, out, req)
        assert report.verification["passed"] and report.settings["format"].startswith("weight-only int8")
        assert any("quantized no node" in w for w in report.warnings), report.warnings
        assert out.stat().st_size < 0.4 * source.stat().st_size
        return
    if model_id in OUT_OF_BUDGET:
        search, _ = OUT_OF_BUDGET[model_id]
        req.search = search
        with pytest.raises(VerificationError) as info:
            quantize_model(source, out, req)
        assert not list(tmp_path.glob("*int8*"))  # nothing written, no temporary left behind
        report = info.value.result
        assert not report.verification["passed"] and report.verification["failures"]
        if search:
            assert not report.search["met"] and len(report.search["trials"]) > 4
        return
    report = quantize_model(source, out, req)
    assert report.verification["passed"], report.verification["failures"]
    assert report.calibration["samples"] >= 32 and report.calibration["measured"]
    float_size = source.stat().st_size if source.is_file() else report.size_before
    assert out.exists()
    if model_id in NOT_SMALLER:
        assert any("not smaller than the float one" in w for w in report.warnings), report.warnings
    else:
        assert out.stat().st_size < float_size
    if model.check:
        model.check(run_task(model, out, names))


def test_a_trial_onnxruntime_cannot_load_is_a_failed_trial_not_a_crash(tmp_path):
    """onnxruntime's QDQ per-channel quantizer writes a PP-OCR detector that onnxruntime itself
    refuses (a DequantizeLinear of the fused batch-norm bias); the search met it as its 4th settings
    variant and died with ModelLoadError. Now it is a failed trial: with that variant alone, the budget
    is missed cleanly, nothing written, and the reason is the load error."""
    calib = tmp_path / "calibration.npz"
    arrays = calibration("ocr-det-onnx")
    np.savez(calib, x=arrays["x"][:16])
    out = tmp_path / "det-int8.onnx"
    req = Request(mode="static", calibration=str(calib), quant_format="qdq", per_channel=True, search=False,
                  latency_runs=0, layers=False)
    with pytest.raises(VerificationError, match="onnxruntime cannot load") as info:
        quantize_model(CORPUS["ocr-det-onnx"].path, out, req)
    assert not out.exists() and info.value.verification.score() == float("inf")


def test_search_score_counts_only_what_the_budget_judges():
    """The score that ranks trials counted top-1 disagreement even where the budget does not judge
    it (labelled data; a cosine-only budget for box regressors), so on BlazeFace a cosine-only
    search ranked nodes by the regressors' meaningless argmax instead of the classifier's cosine."""
    from shipyard.verify import Budget, judge

    rng = np.random.default_rng(0)
    ref = {"boxes": rng.standard_normal((64, 16)), "scores": rng.standard_normal((64, 1))}
    got = {"boxes": ref["boxes"] + rng.standard_normal((64, 16)) * 0.3, "scores": ref["scores"] * 0.9 + 0.3}
    agreement_judged = judge(ref, got, Budget())
    cosine_only = judge(ref, got, Budget(min_agreement=0.0))
    worst_cosine = max(1 - d.cosine for d in cosine_only.outputs)
    assert agreement_judged.score() > worst_cosine + 0.01  # the boxes' disagreement counts here
    assert cosine_only.score() == pytest.approx(worst_cosine)


def test_mixed_range_concat_is_kept_float_from_the_start(tmp_path):
    """NudeNet (YOLOv8n) ends in Concat(boxes 0..320 px, class scores 0..1): with one int8 scale
    the scores get 0.7 quantization levels. The search used to miss the budget after 400 trials
    (about 20 minutes: top-1 over anchors 26%); now the calibration ranges name that Concat before
    any trial, it stays float, output0 is judged as its two parts (boxes, scores) by cosine, and
    per-channel weights meet the budget in a couple of trials. The written model still finds the
    face in the astronaut photo."""
    import onnx

    model = CORPUS["nudenet-yolov8n-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "nudenet-int8.onnx"
    report = quantize_model(model.path, out, Request(mode="static", calibration=str(calib), latency_runs=0,
                                                     layers=False))
    assert report.verification["passed"], report.verification["failures"]
    search = report.search
    assert [c["node"] for c in search["kept_from_start"]] == ["/model.22/Concat_25"]
    assert search["kept_from_start"][0]["ratio"] > 100  # 320 px against 0..1 scores
    assert len(search["trials"]) <= 4 and search["seconds"] < 60
    parts = {d["name"]: d["cosine"] for d in report.outputs}
    assert set(parts) == {"output0[0:4]", "output0[4:22]"} and min(parts.values()) >= 0.99
    ops = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops["/model.22/Concat_25"] == "Concat" and "QLinearConv" in ops.values()
    assert out.stat().st_size < 0.4 * model.path.stat().st_size
    model.check(run_task(model, out, {}))


def test_dynamic_quantization_enters_if_subgraphs(tmp_path):
    """silero-vad keeps its convolutions in the two branches of an If on the sample rate. Dynamic
    quantization wrote them unquantized (onnxruntime's quantizer skips subgraphs unless told); with
    EnableSubgraph (and the Constant weights lifted into the branches' initializers) the six Convs of
    each branch become ConvInteger. The result is judged like any other: here the VAD probability
    loses too much (cosine about 0.88), so it is refused and nothing written; --force writes it."""
    from shipyard.quantize.onnx_quant import quantized_op_count

    model = CORPUS["silero-vad-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "vad-dyn.onnx"
    req = Request(mode="dynamic", calibration=str(calib), latency_runs=0, layers=False)
    with pytest.raises(VerificationError, match="output: cosine") as info:
        quantize_model(model.path, out, req)
    assert not out.exists() and info.value.verification.outputs[0].cosine < 0.99
    req.force = True
    quantize_model(model.path, out, req)
    assert quantized_op_count(out) >= 12  # 6 ConvInteger (+ their DynamicQuantizeLinear) in each branch
    assert out.stat().st_size < 0.8 * model.path.stat().st_size


def test_int8_slower_than_float_is_refused_not_chosen_silently(tmp_path):
    """PP-OCR's orientation classifier (MobileNetV3-small x0.35 on 48x192 lines, 0.6 MB) is inside
    the budget in int8 but runs slower than float on onnxruntime: the model is overhead-bound, and
    int8 adds nodes rather than saving arithmetic: a QuantizeLinear/DequantizeLinear pair around each
    op onnxruntime has no int8 kernel for (the 18 Div and 9 HardSigmoid of its hard-swish and SE gates)
    and NCHW<->NHWC Transposes around the u8s8 QLinearConvs (34). It was written (0.63x the speed)
    with exit 0; without the search it is now refused with the figures and the advice to keep the
    float model, nothing written, unless --force. With the search, int8 weights computed in float are
    written instead: a quarter of the file at the float speed, and the warning says why."""
    from shipyard.quantize.request import SlowerThanFloat

    model = CORPUS["ocr-cls-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "cls-int8.onnx"
    req = Request(mode="static", calibration=str(calib), latency_runs=100, threads=1, layers=False, search=False)
    with pytest.raises(SlowerThanFloat, match="keep the float model") as info:
        quantize_model(model.path, out, req)
    report = info.value.result
    assert report.verification["passed"] and report.latency_after_ms > report.latency_before_ms
    assert not out.exists() and not list(tmp_path.glob("*int8*"))
    req.search = True
    report = quantize_model(model.path, out, req)
    assert report.settings["format"].startswith("weight-only int8") and report.search["weights_fallback"]["met"]
    assert any("int8 activations ran slower than float" in w for w in report.warnings), report.warnings
    assert out.stat().st_size < 0.4 * model.path.stat().st_size
    model.check(run_task(model, out, {}))
    req.force, req.search = True, False
    report = quantize_model(model.path, out, req)
    assert out.exists() and report.settings["format"] == "QOperator"
    # measured afresh: wherever these figures say "slower", the report says so too
    slower = (report.latency_after_ms > report.latency_before_ms * 1.1
              and report.latency_after_ms - report.latency_before_ms >= 0.05)
    assert slower == any("slower than the float model" in w for w in report.warnings)


def test_the_search_is_time_boxed(tmp_path):
    """The search used to stop only at 400 trials (BlazeFace: 1021 s, PP-OCR det: > 15 min). Now no
    trial starts after its time box: it ends like a search that ran out of trials (the closest model
    judged, nothing written) and says that time stopped it. basic-pitch meets the budget only after
    about 35 trials (its float front, then a head node or two) of about a second each, so a 3-second
    box stops the search after a few."""
    model = CORPUS["basic-pitch-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "bp-int8.onnx"
    req = Request(mode="static", calibration=str(calib), latency_runs=0, layers=False, max_seconds=3)
    with pytest.raises(VerificationError) as info:
        quantize_model(model.path, out, req)
    search = info.value.result.search
    assert search["stopped"] == "time" and not search["met"] and not out.exists()
    assert 1 <= len(search["trials"]) < 10 and search["seconds"] < 45  # the trial under way when time ran out ends


def test_a_posteriorgram_is_judged_by_its_note_decisions(tmp_path):
    """basic-pitch's three outputs are sigmoid posteriorgrams (frames x 88 pitches, frames x 264
    contour bins), nearly all values below 0.1. The budget judged them by the argmax of each frame —
    which near-zero pitch is largest — and reported the onsets at 16% top-1 agreement, a figure of
    noise that also steered the search. Now each is read as probabilities (values in [0, 1] not
    summing to 1) and judged by its decisions at 0.5 over the elements either model calls positive,
    and the report says so. Fully int8 (no search) it misses the budget on figures that mean
    something: about a third of the onsets agree (and cosine 0.97); nothing is written."""
    model = CORPUS["basic-pitch-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "bp-int8.onnx"
    req = Request(mode="static", calibration=str(calib), per_channel=True, search=False, latency_runs=0, layers=False)
    with pytest.raises(VerificationError, match="decision agreement at > 0.5") as info:
        quantize_model(model.path, out, req)
    assert not out.exists()
    outputs = {d["name"]: d for d in info.value.result.outputs}
    assert {d["kind"] for d in outputs.values()} == {"probabilities"}
    assert all("decisions at > 0.5" in d["judged_by"] and "sigmoid" in d["judged_by"] for d in outputs.values())
    onset = outputs["StatefulPartitionedCall:2"]
    assert onset["positives"] >= 50 and onset["decision_agreement"] < 0.9 and onset["argmax_agreement"] < 0.5
    assert onset["judged_agreement"] == onset["decision_agreement"]


def test_blazeface_meets_the_budget_by_keeping_a_stretch_float(tmp_path):
    """BlazeFace (TFLite -> ONNX, calibrated on real faces and scenes). With its mixed-range
    classificators Concat kept float, the 8x8 head's logits still lose too much (cosine 0.979 with
    per-channel weights). The per-node search measured 326 of its ~100 nodes one by one (0.7 s each)
    and its time box ran out at cosine 0.9886; keeping stretches of the graph float and halving the
    one that passes meets the budget in a few dozen trials, and the int8 model still finds the
    astronaut's face. About 1-2 minutes on two shared cores: the one test that proves the search by
    stretches on a real detector (test_a_large_graph_is_searched_by_stretches_within_its_time_box
    covers its logic in 1 s). Latency is not measured here: this mixed model runs slower than float
    on onnxruntime (see docs/quantize.md), which quantize then refuses."""
    model = CORPUS["blazeface-tflite"]
    calib = calibration_file(model.id, tmp_path)
    source, names = source_for_quantize(model, tmp_path)
    out = tmp_path / "blazeface-int8.onnx"
    report = quantize_model(source, out, Request(mode="static", calibration=str(calib), latency_runs=0, layers=False))
    assert report.verification["passed"], report.verification["failures"]
    search = report.search
    assert search["met"] and len(search["trials"]) <= 80, len(search["trials"])
    assert [c["node"] for c in search["kept_from_start"]] == ["classificators"]
    kept = [row["node"] for row in search["kept_float"]]
    assert 1 <= len(kept) <= 30 and not search["sensitivity"]  # found by stretches, not node by node
    parts = {d["name"]: d["cosine"] for d in report.outputs}
    assert min(parts.values()) >= 0.99 and "classificators[512:896]" in parts
    assert out.stat().st_size < source.stat().st_size
    model.check(run_task(model, out, names))


def test_nncf_quantizes_a_paddle_export_whose_weights_are_constant_nodes(tmp_path):
    """PP-OCR's orientation classifier (a Paddle export: its 308 weights are Constant nodes, its
    batch norms separate nodes) through ``--engine nncf``. NNCF's ONNX backend quantizes and stores
    as int8 only weights that are initializers, and folds no batch norm: on the graph as exported it
    wrote 1.15x the float size and lost 5 points of accuracy (100% -> 95%, outside the budget). On
    the graph onnxruntime's quantizer gets too (constants lifted, batch norms folded) it is inside
    the budget at 0.65x the size. NNCF's own optional dependency: skipped without the openvino extra."""
    pytest.importorskip("nncf", reason="the openvino extra is not installed")
    import onnx

    model = CORPUS["ocr-cls-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "cls-nncf.onnx"
    report = quantize_model(model.path, out, Request(mode="static", engine="nncf", calibration=str(calib),
                                                     latency_runs=0, layers=False))
    assert report.verification["passed"], report.verification["failures"]
    assert report.settings["engine"] == "nncf"
    accuracy = report.verification["accuracy"]
    assert accuracy["candidate"] >= accuracy["reference"] - 0.01
    assert out.stat().st_size < 0.75 * model.path.stat().st_size
    graph = onnx.load(str(out)).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    dq = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    # weights stored as int8 (35 of the 53 convolutions: NNCF leaves the squeeze-excite gates float);
    # on the graph as exported, none
    assert sum(dq.get(c.input[1]) in int8 for c in convs) >= len(convs) // 2
    model.check(run_task(model, out, {}))


def test_weight_only_int8_keeps_pp_ocr_det_inside_the_budget(tmp_path):
    """PP-OCR det: no model with int8 activations reaches the budget (decisions 97.8% at best, see
    OUT_OF_BUDGET). With int8 weights computed in float, per channel and bias-corrected, its map is
    at 98.8% decisions; the weight-only search keeps the one convolution that matters in float and
    is inside in a few trials, at about a quarter of the file and still finding the three lines."""
    model = CORPUS["ocr-det-onnx"]
    calib = calibration_file(model.id, tmp_path)
    out = tmp_path / "det-w8.onnx"
    report = quantize_model(model.path, out, Request(mode="weights", calibration=str(calib), latency_runs=0,
                                                     layers=False))
    assert report.verification["passed"], report.verification["failures"]
    assert report.settings["bias_correction"] is True and report.settings["per_channel"] is True
    search = report.search
    assert search["met"] and 2 <= len(search["trials"]) <= 30 and 1 <= len(search["kept_float"]) <= 4
    assert not search["trials"][0]["passed"]  # every weight int8 misses: the search is what makes it
    assert out.stat().st_size < 0.3 * model.path.stat().st_size
    model.check(run_task(model, out, {}))


def test_static_int8_falls_back_to_weight_only_when_out_of_reach(tmp_path):
    """PP-OCR rec: int8 activations stay outside the budget (cosine 0.95-0.98, top-1 < 97%, however
    many nodes the search keeps float). Its int8 weights alone cost the model: several convolutions
    compute small differences of large sums, and rounding their weights (per channel, 1-2% of their
    norm) shifts their outputs by up to 64% — a constant per channel, since their inputs have large
    means. Without bias correction weight-only int8 misses too; with it (the mean error taken back
    out of each bias) it is inside, and `--mode static` writes it — saying so — rather than nothing.
    The static search is time-boxed short here: its full run is the same miss (OUT_OF_BUDGET history)."""
    import onnx

    from shipyard.model import Model
    from shipyard.quantize import onnx_quant
    from shipyard.verify import Budget, judge, model_outputs

    model = CORPUS["ocr-rec-onnx"]
    arrays = calibration(model.id)
    calib = tmp_path / "calibration.npz"
    np.savez(calib, **arrays)
    out = tmp_path / "rec-int8.onnx"
    report = quantize_model(model.path, out, Request(mode="static", calibration=str(calib), latency_runs=0,
                                                     layers=False, max_seconds=15))
    assert report.verification["passed"], report.verification["failures"]
    assert not report.search["met"] and report.search["weights_fallback"]["met"]
    assert report.settings["format"].startswith("weight-only int8") and report.settings["bias_correction"] is True
    assert any("no model with int8 activations met the budget" in w for w in report.warnings), report.warnings
    assert out.stat().st_size < 0.3 * model.path.stat().st_size
    model.check(run_task(model, out, {}))
    # the same weights without bias correction: outside the budget
    prepared = onnx_quant.prepare(onnx.load(str(model.path)), tmp_path)
    plain = tmp_path / "rec-w8-plain.onnx"
    onnx_quant.quantize_weights_only(prepared, plain, 1024, ())
    feeds = [{"x": x} for x in arrays["x"]]
    _, ref = model_outputs(Model("onnx", model.path), feeds)
    _, got = model_outputs(Model("onnx", plain), feeds)
    assert not judge(ref, got, Budget()).passed
