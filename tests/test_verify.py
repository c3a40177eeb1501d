"""The verification core: one pairing rule, one feed adapter, every output judged, two criteria."""
from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InputError, UsageError
from shipyard.model import Signature, TensorSpec
from shipyard.verify import Budget, Exact, adapt_feeds, judge


def _scores(n: int = 200, k: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype("float32")


def test_exact_checks_every_output_not_only_the_first():
    ref = {"probs": _scores(), "aux": _scores(seed=1)}
    got = {"probs": ref["probs"].copy(), "aux": ref["aux"] + 0.5}
    v = judge(ref, got, Exact())
    assert not v.passed and len(v.outputs) == 2
    assert v.failures == ["aux: max abs error 0.5 beyond atol 0.0001 + rtol 0.001"]


def test_pairing_by_converter_names_then_position_and_leftovers_are_errors():
    ref = {"probs:0": _scores(), "boxes": _scores(seed=2)}
    got = {"serving_default_probs": ref["probs:0"], "Identity:0": ref["boxes"]}
    v = judge(ref, got, Exact())
    assert v.passed and [(p.ref, p.other, p.how) for p in v.pairing] == [
        ("probs:0", "serving_default_probs", "name"), ("boxes", "Identity:0", "position")]
    with pytest.raises(InputError, match="no counterpart in the other model: boxes"):
        judge(ref, {"probs": ref["probs:0"]}, Exact())


def test_budget_agreement_and_cosine_on_every_output():
    ref = {"scores": _scores(), "boxes": _scores(seed=3) * 100}
    flipped = ref["scores"].copy()
    order = np.argsort(-flipped[:10], axis=1)
    rows = np.arange(10)
    # 5% of rows swap their two best classes: the argmax changes, the vector hardly does
    flipped[rows, order[:, 0]], flipped[rows, order[:, 1]] = flipped[rows, order[:, 1]], flipped[rows, order[:, 0]]
    v = judge(ref, {"scores": flipped, "boxes": ref["boxes"] * 1.0001}, Budget())
    assert not v.passed and any("scores: top-1 agreement" in f for f in v.failures)
    assert judge(ref, {"scores": ref["scores"] + 1e-4, "boxes": ref["boxes"]}, Budget()).passed


def test_a_pure_scale_bug_fails_exact_although_cosine_is_one():
    ref = {"y": _scores()}
    v = judge(ref, {"y": ref["y"] * 2}, Exact())
    assert not v.passed and v.outputs[0].cosine == pytest.approx(1.0) and v.outputs[0].max_rel == pytest.approx(1.0)


def test_labels_replace_agreement_by_task_accuracy():
    ref = {"scores": _scores(100)}
    labels = ref["scores"].argmax(-1)
    worse = ref["scores"].copy()
    worse[:3] = -worse[:3]  # three of 100 predictions change: 3 points of accuracy lost
    v = judge(ref, {"scores": worse}, Budget(min_cosine=0.5), labels)
    assert v.accuracy["reference"] == 1.0 and v.accuracy["candidate"] == pytest.approx(0.97)
    assert not v.passed and "drop 3.00 points > 1" in v.failures[0]
    assert judge(ref, {"scores": worse}, Budget(min_cosine=0.5, max_accuracy_drop=0.05), labels).passed


def test_labels_that_match_no_output_are_an_error():
    with pytest.raises(InputError, match="no output holds one row of class scores"):
        judge({"y": _scores(10)}, {"y": _scores(10)}, Budget(), np.arange(7))


@pytest.mark.parametrize(("text", "expected"), [
    (None, Budget()),
    ("top1=98%", Budget(min_agreement=0.98)),
    ("cosine=0.995,drop=2", Budget(min_cosine=0.995, max_accuracy_drop=0.02)),
    ("top1>=0.97, drop=0.5%", Budget(min_agreement=0.97, max_accuracy_drop=0.005)),
])
def test_budget_parse(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize("text", ["top1", "speed=2", "cosine=abc", "top1=150%", "drop=120"])
def test_budget_parse_rejects_what_it_cannot_read(text):
    with pytest.raises(UsageError, match="--accuracy-budget"):
        Budget.parse(text)


def test_feed_adapter_renames_reshapes_and_casts():
    ref = Signature((TensorSpec("x", "float32", (-1, 4)), TensorSpec("flag", "bool", ())), ())
    other = Signature((TensorSpec("serving_default_x:0", "float32", (-1, 4)), TensorSpec("flag_1", "int32", (1,))), ())
    fed = adapt_feeds({"x": np.ones((2, 4), "float32"), "flag": np.array(True)}, ref, other)
    assert set(fed) == {"serving_default_x:0", "flag_1"}
    assert fed["flag_1"].dtype == np.int32 and fed["flag_1"].shape == (1,)
