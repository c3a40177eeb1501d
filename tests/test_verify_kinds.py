"""The lossy budget judges each output by the decision it encodes, read from the output itself:
top-1 agreement for class scores, thresholded decisions for independent probabilities (sigmoid
multi-label heads, segmentation maps), cosine alone for single values; and per-output budgets.

The probability-map case is basic-pitch's note/onset posteriorgram and PP-OCR's text map: values in
[0, 1] mostly near 0, where the argmax of a row picks among near-zero values (float noise of 1e-3
changes it) while what the model decides is which elements cross the threshold."""
from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import UsageError
from shipyard.verify import Budget, judge, output_kind


def _posteriorgram(seed: int = 0) -> np.ndarray:
    """[32 clips, 172 frames, 88 pitches] of sigmoid outputs: a floor near 0.05, a few notes near 0.9."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.12, (32, 172, 88))
    for clip in range(32):
        for _ in range(3):
            pitch, start = rng.integers(0, 88), rng.integers(0, 150)
            p[clip, start:start + 20, pitch] = rng.uniform(0.7, 0.95, min(20, 172 - start))
    return p.astype(np.float32)


def _int8_noise(p: np.ndarray, seed: int = 1) -> np.ndarray:
    """About what a uint8 output over [0, 1] adds: +-1.5 quantization steps."""
    return np.clip(p + np.random.default_rng(seed).uniform(-1.5, 1.5, p.shape) / 255, 0, 1).astype(np.float32)


def test_a_probability_map_is_judged_by_its_decisions_not_its_argmax():
    ref = {"note": _posteriorgram()}
    got = {"note": _int8_noise(ref["note"])}
    v = judge(ref, got, Budget())
    d = v.outputs[0]
    assert d.kind == "probabilities" and v.passed, v.failures
    assert d.decision_agreement == 1.0 and d.positives > 1000
    assert d.top1_agreement < 0.9  # what the old criterion judged, and failed: the argmax of the near-zero floor
    assert "decisions at > 0.5" in d.judged_by and "sigmoid / probability map" in d.judged_by
    # the user can force the argmax criterion back, and it says so
    forced = judge(ref, got, Budget.parse("kind=scores"))
    assert not forced.passed and "top-1 agreement" in forced.failures[0]
    assert "forced by the budget" in forced.outputs[0].judged_by


def test_a_broken_probability_map_still_fails():
    """Not a way to pass anything: outputs scaled by 0.6 keep cosine 1.0 and agree on 99.9% of the
    elements (most are negatives in both), but lose most notes: the agreement counts only elements
    either model calls positive. All-zero and all-one maps fail too."""
    p = _posteriorgram()
    scaled = judge({"note": p}, {"note": p * 0.6}, Budget())
    d = scaled.outputs[0]
    assert d.cosine > 0.9999 and np.mean((p > 0.5) == (p * 0.6 > 0.5)) > 0.99
    assert not scaled.passed and d.decision_agreement < 0.7
    assert "decision agreement at > 0.5" in scaled.failures[0]
    for broken in (np.zeros_like(p), np.ones_like(p)):
        assert not judge({"note": p}, {"note": broken}, Budget()).passed
    # a score over every element stays the search's guide: the scaled map is far from perfect
    assert scaled.score() > 0.3


def test_output_kinds_are_read_from_the_values():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((16, 10))
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert output_kind(logits) == "scores" and output_kind(softmax) == "scores"
    assert output_kind(1 / (1 + np.exp(-logits))) == "probabilities"
    assert output_kind(rng.uniform(0, 1, (16, 1))) == "probabilities"  # one sigmoid: a yes/no per sample
    # a float32 sigmoid rounds up to 1.0000001 (PP-OCR det's map): still a probability map
    assert output_kind(np.array([[0.0, 0.3, np.float32(1.0000001)]] * 4, np.float32)) == "probabilities"
    assert output_kind(rng.standard_normal((16, 1)) * 50) == "values"
    # a softmax output keeps top-1 agreement as its criterion
    v = judge({"y": softmax}, {"y": softmax[:, ::-1]}, Budget(min_cosine=0.0))
    assert v.outputs[0].kind == "scores" and "top-1 agreement" in v.failures[0]
    assert v.outputs[0].judged_agreement == v.outputs[0].top1_agreement


def test_a_threshold_in_the_budget_moves_the_decision():
    p = _posteriorgram()
    # values near 0.1 (the floor) pushed up to 0.2: harmless at 0.5, every floor element flips at 0.15
    got = np.where(p < 0.12, p + 0.1, p)
    assert judge({"m": p}, {"m": got}, Budget(min_cosine=0.5)).passed
    v = judge({"m": p}, {"m": got}, Budget.parse("cosine=0.5,threshold=0.15"))
    assert not v.passed and "decision agreement at > 0.15" in v.failures[0]


def test_per_output_budgets():
    b = Budget.parse("cosine=0.995,StatefulPartitionedCall:1:cosine=0.95,onset:top1=90%")
    assert b.min_cosine == 0.995 and dict(b.outputs)["StatefulPartitionedCall:1"].min_cosine == 0.95
    assert dict(b.outputs)["onset"].min_agreement == 0.9 and dict(b.outputs)["onset"].min_cosine == 0.995
    assert b.for_output("StatefulPartitionedCall:1").min_cosine == 0.95
    assert b.for_output("onset[0:4]").min_agreement == 0.9  # a part of a split output takes its output's budget
    assert b.for_output("other") is b
    ref = {"StatefulPartitionedCall:1": np.linspace(1, 2, 64).reshape(8, 8), "onset": np.eye(8)}
    noise = np.random.default_rng(0).standard_normal((8, 8)) * 0.3
    got = {"StatefulPartitionedCall:1": ref["StatefulPartitionedCall:1"] + noise, "onset": np.eye(8)}
    cos = judge(ref, got, Budget(), ).outputs[0].cosine
    assert 0.95 < cos < 0.995
    v = judge(ref, got, Budget.parse("StatefulPartitionedCall:1:cosine=0.95,StatefulPartitionedCall:1:kind=values"))
    assert v.passed, v.failures
    assert not judge(ref, got, Budget.parse("onset:cosine=0.95")).passed  # the budget of another output


@pytest.mark.parametrize(("text", "fragment"), [
    ("nots:cosine=0.9", "unknown output 'nots'; did you mean 'note'?"),
    ("kind=argmx", "unknown kind 'argmx'; did you mean 'argmax'?"),
    ("threshold=1.5", "strictly between 0 and 1"),
    (":cosine=0.9", "cannot read"),
    ("note:speed=2", "cannot read"),
])
def test_bad_per_output_budgets_are_usage_errors(text, fragment):
    p = _posteriorgram()
    with pytest.raises(UsageError, match=None) as info:
        judge({"note": p}, {"note": p}, Budget.parse(text))
    assert fragment in info.value.message
