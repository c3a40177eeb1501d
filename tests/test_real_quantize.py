"""Static int8 quantization with the accuracy budget on the real-model corpus (tests/corpus.py).

Each quantizable model is calibrated and judged on realistic samples (tests/corpus_calibration.py),
with the default budget (top-1 agreement >= 99% and cosine >= 0.99 on every output vs float, or an
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
# agreement; nudenet output0: 48%; ocr-det probability map: 2.4%), so no int8 model, however many
# nodes stay float, can reach 99%. (model id -> (run the search in the test?, what it reached))
OUT_OF_BUDGET = {
    # Issue 12's face detector? Not these figures: here the default settings already give regressors
    # cosine 0.986 (not 0.71), top-1 85.7%. The search (~400 trials) keeps no head in float; keeping
    # all ten head nodes (regressor_8/16, classificator_8/16, their Reshapes, both Concats) float by
    # hand raises the regressors' top-1 to 95.5% but leaves classificators at cosine 0.98: the heads
    # do not restore it. With a cosine-only budget (min_agreement=0) the search tries 400 trials
    # (338 s) and ends at classificators cosine 0.9882 < 0.99.
    "blazeface-tflite": (True, ("regressors [896, 16]: best trial cosine 0.993, top-1 86.2% (1e-5 noise alone: "
                               "87%); classificators cosine 0.98")),
    # The full search (400 trials, about 20 min here) found the output head /model.22/Concat_25 (score
    # gain 0.18) and /model.2/cv2/conv/Conv and reached cosine 0.9997, top-1 26.5% (1e-5 noise alone:
    # 48%); the test asserts the clean failure without it.
    "nudenet-yolov8n-onnx": (False, ("output0 [22, 2100] (4 box rows + 18 class rows over 2100 anchors): every "
                                    "setting cosine 0.9996, top-1 6-7%")),
    # Default settings: cosine 0.844, top-1 82.8% (a real loss, not only the metric), yet written with
    # --force the model still finds the three printed lines (precision 1.0, blank bands 0.0). The
    # search ran past 190 trials (> 15 min) without meeting it; the test asserts the clean failure without it.
    "ocr-det-onnx": (False, ("sigmoid_0.tmp_0 [288, 480] probability map: cosine 0.844, top-1 82.8% (1e-5 noise "
                            "alone: 2.4%)")),
}
# Models onnxruntime's quantizer leaves unquantized: shipyard refuses (UnsupportedError, nothing written).
NOTHING_TO_QUANTIZE = {
    "silero-vad-onnx": "every weight lives in Constant nodes inside If subgraphs (8 kHz / 16 kHz branches); the "
                       "quantizer does not enter subgraphs, so its 'int8' model had no quantized node and was 1.44x "
                       "larger than float",
}
FAST = {"ocr-cls-onnx", "fer-keras-h5", "silero-vad-onnx", "nudenet-yolov8n-onnx", "ocr-det-onnx"}
QUANTIZABLE = ["fer-keras-h5", "silero-vad-onnx", "basic-pitch-savedmodel", "basic-pitch-tflite", "basic-pitch-onnx",
               "nudenet-yolov8n-onnx", "blazeface-tflite", "face-mesh-tflite", "ocr-det-onnx", "ocr-rec-onnx",
               "ocr-cls-onnx"]


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
        with pytest.raises(UnsupportedError, match="quantized no node"):
            quantize_model(source, out, req)
        assert not list(tmp_path.glob("*int8*"))
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
    assert out.exists() and out.stat().st_size < float_size
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
