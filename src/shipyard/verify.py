"""The verification core: every command that writes a model checks it here.

One pairing rule (:func:`pair_names`: names with and without ``:0`` and
converter prefixes first, then position, and an error naming any tensor left over), one feed
adapter (:func:`adapt_feeds`: reshapes, dtype casts and channel moves such as NCHW -> NHWC,
undone on the outputs by :func:`restore_layout`), every output checked, and two criteria:

- :class:`Exact` for float paths (freeze, convert, float transforms): ``|a-b| <= atol + rtol*|a|``.
- :class:`Budget` for lossy paths (quantize, lossy transforms, quantized ship artifacts):
  per-output cosine and top-1 agreement against the float model, or the drop in task accuracy
  when the data carry labels.

Quantized (int8/uint8) inputs and outputs stay in the real domain here: real inputs given to
an int8 input are quantized by the runner with the scale it reports, and int8 outputs are
dequantized with theirs (:func:`shipyard.runtimes.base.dequantize_outputs`) before any figure.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from shipyard.errors import InputError, ShipyardError, UsageError
from shipyard.model import Model, Signature, TensorSpec, tensor_name
from shipyard.report.numbers import percent

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
Feeds = list[dict[str, np.ndarray]]


# -- figures -----------------------------------------------------------------------------

TOP_K = 5
TIE = 0.01  # fraction of a row's range below which two scores are a tie (about 2.5 int8 levels)


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    argmax_agreement: float | None
    nonfinite: int
    passed: bool
    shape_ref: tuple[int, ...]
    shape_other: tuple[int, ...]
    mean_rel: float = 0.0
    snr_db: float | None = None
    topk_agreement: float | None = None
    nonfinite_ref: int = 0
    nonfinite_other: int = 0
    atol: float | None = None
    rtol: float | None = None
    rel_l2: float | None = None  # ||other - ref|| / ||ref||: 1.0 for an output off by a factor 2, where cosine stays 1
    outside: int = 0     # elements beyond atol + rtol*|ref| (why a pair fails, and how widely)
    size: int = 0
    # the elements with the largest |error|: index, reference value, other value, |error|, what was allowed
    worst: list = field(default_factory=list)
    # |error| distribution: counts of exact zeros and per decade ([10^k, 10^(k+1)) for k in decades)
    histogram: dict = field(default_factory=dict)
    # top-1 agreement where a changed argmax counts only when the reference's own values of the
    # two classes differ by more than TIE of the row's range: closer than that is a tie at 8-bit
    # resolution (256 levels), and a tie broken either way is no error (box coordinates, maps)
    top1_agreement: float | None = None
    # what the output holds, read from the reference's values (see output_kind): "scores" (a class
    # axis: argmax decides), "probabilities" (independent values in [0, 1]: a threshold decides),
    # "values" (one value per row)
    kind: str = "values"
    # thresholded decisions (value > threshold) agreeing, over the elements either model calls
    # positive (an IoU: a model that outputs all zeros scores 0, not the share of negatives);
    # elements whose reference lies within TIE of the threshold are ties, forgiven
    decision_agreement: float | None = None
    decision_threshold: float | None = None
    positives: int = 0             # elements the reference or the candidate calls positive
    judged_agreement: float | None = None  # the agreement figure the criterion judged (None: not judged)
    judged_by: str | None = None   # which criterion judged this output, and why

    def to_json(self) -> dict:
        def clean(v):
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)  # JSON has no inf/nan
            return v

        return {k: clean(v) for k, v in self.__dict__.items()}


def _snr_db(a: np.ndarray, err: np.ndarray) -> float:
    """Signal-to-noise ratio of the reference against the difference, in decibels."""
    signal, noise = float(np.sum(a * a)), float(np.sum(err * err))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def _topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean overlap of the top-k classes per row (1.0: the same k classes in each row)."""
    k = min(k, a.shape[-1])
    ta = np.argpartition(-a.reshape(-1, a.shape[-1]), k - 1, axis=-1)[:, :k]
    tb = np.argpartition(-b.reshape(-1, b.shape[-1]), k - 1, axis=-1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


def _decisive_agreement(a: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> float:
    """Top-1 agreement forgiving ties: a row disagrees only when the reference scores the
    candidate's class lower than its own by more than TIE of the row's range."""
    rows = a.reshape(-1, a.shape[-1])
    ia, ib = ia.reshape(-1), ib.reshape(-1)
    idx = np.arange(len(rows))
    gap = rows[idx, ia] - rows[idx, ib]
    span = rows.max(-1) - rows.min(-1)
    with np.errstate(invalid="ignore"):
        return float(np.mean((ia == ib) | ~(gap > TIE * span)))


def output_kind(a: np.ndarray) -> str:
    """What an output holds, from its reference values alone: ``scores`` when its last axis is a
    class axis (logits, or probabilities summing to 1: argmax is the decision), ``probabilities``
    when every value lies in [0, 1] and rows do not sum to 1 (sigmoid heads, multi-label
    posteriorgrams, segmentation maps: each element is its own yes/no at a threshold), otherwise
    ``values`` (one number per row: regressions)."""
    if a.size == 0 or not np.all(np.isfinite(a)):
        return "scores" if a.ndim >= 2 and a.shape[-1] > 1 else "values"
    # float32 sigmoids round to 1.0000001 (PP-OCR det's text map): a few ulps past 1 are still [0, 1]
    in_unit = float(a.min()) >= -1e-6 and float(a.max()) <= 1.0 + 1e-6
    sums_to_one = a.ndim >= 2 and a.shape[-1] > 1 and bool(np.allclose(a.sum(-1), 1.0, atol=1e-3))
    if in_unit and not sums_to_one:
        return "probabilities"
    return "scores" if a.ndim >= 2 and a.shape[-1] > 1 else "values"


def _decision_agreement(a: np.ndarray, b: np.ndarray, threshold: float) -> tuple[float, int]:
    """(share of the elements either side calls positive whose decisions agree, that count);
    a reference within TIE of the threshold is a tie at 8-bit resolution, forgiven."""
    pa, pb = a > threshold, b > threshold
    union = int(np.count_nonzero(pa | pb))
    if not union:
        return 1.0, 0
    flipped = int(np.count_nonzero((pa != pb) & ~(np.abs(a - threshold) <= TIE)))
    return 1.0 - flipped / union, union


def diff(name: str, ref: np.ndarray, other: np.ndarray, atol: float = 1e-4, rtol: float = 1e-3,
         threshold: float = 0.5) -> OutputDiff:
    """Compare two arrays elementwise; passes when ``|a-b| <= atol + rtol*|a|`` everywhere."""
    a = np.asarray(ref)
    b = np.asarray(other)
    if a.shape != b.shape and a.size == b.size:
        b = b.reshape(a.shape)
    if a.shape != b.shape:
        return OutputDiff(name, float("inf"), float("inf"), float("inf"), 0.0, None, 0, False, a.shape, b.shape,
                          atol=atol, rtol=rtol, rel_l2=float("inf"))
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    bad_a, bad_b = int((~np.isfinite(a64)).sum()), int((~np.isfinite(b64)).sum())
    nonfinite = bad_a + bad_b
    err = np.abs(a64 - b64)
    with np.errstate(invalid="ignore"):
        rel = err / np.maximum(np.abs(a64), 1e-12)
    max_abs = float(err.max()) if err.size else 0.0
    mean_abs = float(err.mean()) if err.size else 0.0
    max_rel = float(rel.max()) if err.size else 0.0
    mean_rel = float(rel.mean()) if err.size else 0.0
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    cosine = float(np.dot(a64.ravel(), b64.ravel()) / (na * nb)) if na and nb else float(na == nb)
    ne = float(np.linalg.norm(err))
    rel_l2 = ne / float(na) if na else (0.0 if ne == 0.0 else float("inf"))
    agreement = topk = decisive = None
    if a.ndim >= 2 and a.shape[-1] > 1:
        ia, ib = a64.argmax(-1), b64.argmax(-1)
        agreement = float(np.mean(ia == ib))
        decisive = _decisive_agreement(a64, ia, ib)
        if a.shape[-1] > TOP_K:
            topk = _topk_agreement(a64, b64, TOP_K)
    with np.errstate(invalid="ignore"):
        decision, positives = _decision_agreement(a64, b64, threshold)
    allowed = atol + rtol * np.abs(a64)
    with np.errstate(invalid="ignore"):
        beyond = ~(err <= allowed)  # NaN errors count as beyond
    outside = int(beyond.sum())
    passed = nonfinite == 0 and outside == 0
    return OutputDiff(name, max_abs, mean_abs, max_rel, cosine, agreement, nonfinite, passed, a.shape, b.shape,
                      mean_rel=mean_rel, top1_agreement=decisive, snr_db=_snr_db(a64, err) if err.size else None, topk_agreement=topk,
                      nonfinite_ref=bad_a, nonfinite_other=bad_b, atol=atol, rtol=rtol, rel_l2=rel_l2,
                      outside=outside, size=int(err.size), worst=_worst(a64, b64, err, allowed),
                      histogram=_decades(err), kind=output_kind(a64), decision_agreement=decision,
                      decision_threshold=threshold, positives=positives)


WORST = 5


def _worst(a: np.ndarray, b: np.ndarray, err: np.ndarray, allowed: np.ndarray) -> list[dict]:
    """The ``WORST`` elements with the largest |error| (NaN first), where they are and what was allowed."""
    if not err.size:
        return []
    flat = np.where(np.isnan(err), np.inf, err).ravel()
    k = min(WORST, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    return [{"index": [int(i) for i in np.unravel_index(int(j), err.shape)], "ref": float(a.ravel()[j]),
             "other": float(b.ravel()[j]), "abs_error": float(err.ravel()[j]), "allowed": float(allowed.ravel()[j])}
            for j in top]


def _decades(err: np.ndarray) -> dict:
    """How many elements have |error| exactly 0, and how many in each decade [10^k, 10^(k+1))."""
    finite = err[np.isfinite(err)]
    nonzero = finite[finite > 0]
    out = {"zero": int(finite.size - nonzero.size), "nonfinite": int(err.size - finite.size), "decades": {}}
    if nonzero.size:  # one pass (bincount), not a sort: this runs on every output of every search trial
        exps = np.floor(np.log10(nonzero)).astype(np.int64)
        low = int(exps.min())
        out["decades"] = {low + i: int(c) for i, c in enumerate(np.bincount(exps - low)) if c}
    return out


# -- pairing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    ref: str
    other: str
    how: str  # "name" or "position"


def name_key(name: str) -> str:
    """A name as it survives conversion: no ``:0``, no TFLite ``serving_default_`` prefix, and
    for a TFLite tensor of fused ops (``relu;add;conv``) the name of the last op, listed first."""
    name = tensor_name(name.split(";")[0])
    for prefix in ("serving_default_",):
        name = name.removeprefix(prefix)
    return name


def pair_names(ref: list[str], other: list[str], what: str = "output") -> list[Pair]:
    """Match tensors by name where names survive, the rest by position.

    Raises when a tensor on either side has no counterpart, naming it.
    """
    by_key = {name_key(n): n for n in other}
    pairs: dict[str, Pair] = {}
    for n in ref:
        if name_key(n) in by_key:
            pairs[n] = Pair(n, by_key[name_key(n)], "name")
    rest_ref = [n for n in ref if n not in pairs]
    used = {p.other for p in pairs.values()}
    rest_other = [n for n in other if n not in used]
    if len(rest_ref) != len(rest_other):
        missing = rest_ref[len(rest_other):] if len(rest_ref) > len(rest_other) else []
        extra = rest_other[len(rest_ref):] if len(rest_other) > len(rest_ref) else []
        lonely = ", ".join(missing or extra)
        raise InputError(
            f"{what}(s) with no counterpart in the other model: {lonely}",
            hint=f"first model's {what}s: {', '.join(ref)}; other model's: {', '.join(other)}",
        )
    for r, o in zip(rest_ref, rest_other):
        pairs[r] = Pair(r, o, "position")
    return [pairs[n] for n in ref]


# -- criteria ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exact:
    """Float paths: elementwise ``|a-b| <= atol + rtol*|a|``. ``min_cosine`` admits outputs whose
    elements moved by float reassociation (folded batch norms) but whose direction did not."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None

    def failure(self, d: OutputDiff) -> str | None:
        if d.shape_ref != d.shape_other:
            return f"{d.name}: shape {list(d.shape_other)} where the reference has {list(d.shape_ref)}"
        if d.nonfinite_other > d.nonfinite_ref:
            return f"{d.name}: {d.nonfinite_other} NaN/Inf values"
        if d.passed:
            return None
        if self.min_cosine is not None and d.cosine >= self.min_cosine and (
                d.argmax_agreement is None or d.argmax_agreement >= 0.9):
            return None
        return f"{d.name}: max abs error {d.max_abs:.3g} beyond atol {self.atol:g} + rtol {self.rtol:g}"

    def describe(self) -> str:
        return f"atol {self.atol:g}, rtol {self.rtol:g}"

    def to_json(self) -> dict:
        return {"kind": "exact", "atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine}


KINDS = {"auto": "auto", "scores": "scores", "argmax": "scores", "probabilities": "probabilities",
         "threshold": "probabilities", "values": "values", "cosine": "values"}


@dataclass(frozen=True)
class Budget:
    """Lossy paths: how far a quantized model may drift from its float reference.

    Without labels every output must keep ``cosine >= min_cosine`` and agree with float in its
    decisions at least ``min_agreement`` of the time, the decision read from what the output holds
    (``kind``; ``auto``: :func:`output_kind` of the reference): the argmax over the last axis for
    class scores (top-1 agreement), the value against ``threshold`` for independent probabilities
    (a sigmoid multi-label head or a segmentation map, where an argmax picks among near-zero
    values), none for single values (cosine alone). ``kind=scores`` forces top-1 agreement. With
    labels the agreement test is replaced by the task: accuracy may fall by at most
    ``max_accuracy_drop`` (a fraction: 0.01 is one point); cosine is still checked on every output.
    ``outputs`` holds per-output budgets, ((output name, Budget), ...), for the outputs named.
    """

    min_agreement: float = 0.99
    min_cosine: float = 0.99
    max_accuracy_drop: float = 0.01
    kind: str = "auto"
    threshold: float = 0.5
    outputs: tuple = ()

    KEYS: ClassVar[dict[str, str]] = {"top1": "min_agreement", "agreement": "min_agreement",
                                      "decision": "min_agreement", "cosine": "min_cosine",
                                      "accuracy-drop": "max_accuracy_drop", "drop": "max_accuracy_drop",
                                      "kind": "kind", "threshold": "threshold"}
    HINT: ClassVar[str] = ("write KEY=VALUE pairs from top1 (or agreement), cosine, drop, kind (auto, scores, "
                           "probabilities, values), threshold, each optionally for one output as OUTPUT:KEY=VALUE: "
                           "for example top1=99%,cosine=0.99,drop=1,note:cosine=0.98")

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        """``top1=99%,cosine=0.99,drop=1`` (any subset; top-1 and cosine as fractions or percent,
        the accuracy drop in points, or as a fraction below 1 when written with a leading 0);
        ``kind=scores`` judges every output by top-1 agreement; ``OUTPUT:KEY=VALUE`` applies to
        that output only (names may contain ':'; the key is after the last one)."""
        if text is None or not text.strip():
            return cls()
        values: dict[str, object] = {}
        per_output: dict[str, dict[str, object]] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            left, sep, raw = item.strip().partition("=")
            output, colon, key = left.rpartition(":")
            key = key.strip().lower().rstrip(">=<")
            if not sep or key not in cls.KEYS or (colon and not output.strip()):
                raise UsageError(f"--accuracy-budget {text!r}: cannot read {item.strip()!r}", hint=cls.HINT)
            field_name = cls.KEYS[key]
            (per_output.setdefault(output.strip(), {}) if output.strip() else values)[field_name] = \
                cls._value(item.strip(), key, field_name, raw.strip())
        base = cls(**values)
        return replace(base, outputs=tuple((name, replace(base, **vals)) for name, vals in per_output.items()))

    @staticmethod
    def _value(item: str, key: str, field_name: str, raw: str) -> object:
        if field_name == "kind":
            if raw.lower() not in KINDS:
                from shipyard.cliargs import unknown

                raise unknown("kind", raw, sorted(KINDS), flag=f"--accuracy-budget {item!r}:")
            return KINDS[raw.lower()]
        try:
            number = float(raw.rstrip("%"))
        except ValueError as exc:
            raise UsageError(f"--accuracy-budget {item!r}: {raw!r} is not a number") from exc
        if field_name == "max_accuracy_drop":
            number = number / 100 if (raw.endswith("%") or number >= 1) else number
            if not 0 <= number <= 1:
                raise UsageError(f"--accuracy-budget {item!r}: the accuracy drop must be 0-100 points")
        elif field_name == "threshold":
            if not 0 < number < 1:
                raise UsageError(f"--accuracy-budget {item!r}: the decision threshold must lie strictly between 0 and 1")
        else:
            number = number / 100 if (raw.endswith("%") or number > 1) else number
            if not 0 <= number <= 1:
                raise UsageError(f"--accuracy-budget {item!r}: {key} must lie in 0-1 (or 0-100%)")
        return number

    def for_output(self, name: str) -> Budget:
        """The budget of one output: its own when the budget names it (a part ``out[0:4]`` of a
        split output takes the budget of ``out``), else this one."""
        key = name_key(name.split("[", 1)[0] if name.endswith("]") else name)
        return next((b for n, b in self.outputs if name_key(n) == key), self)

    def check_outputs(self, names: Iterable[str]) -> None:
        """A per-output budget naming no output of the model is a usage error, never ignored."""
        names = list(names)
        known = {name_key(n.split("[", 1)[0] if n.endswith("]") else n) for n in names}
        for n, _ in self.outputs:
            if name_key(n) not in known:
                from shipyard.cliargs import unknown

                raise unknown("output", n, sorted({n.split("[", 1)[0] if n.endswith("]") else n for n in names}),
                              flag="--accuracy-budget")

    def kind_of(self, d: OutputDiff) -> str:
        return d.kind if self.kind == "auto" else self.kind

    def agreement_of(self, d: OutputDiff) -> tuple[float | None, str]:
        """(the agreement figure this budget judges for ``d``, its name)."""
        kind = self.kind_of(d)
        if kind == "scores":
            return d.top1_agreement, "top-1 agreement"
        if kind == "probabilities":
            return d.decision_agreement, f"decision agreement at > {self.threshold:g}"
        return None, ""

    def why(self, d: OutputDiff, labelled: bool) -> str:
        """Which criterion judges ``d`` and why, in words for the report."""
        kind = self.kind_of(d)
        forced = " (kind forced by the budget)" if self.kind != "auto" else ""
        if labelled:
            return "cosine; decisions judged by task accuracy on the labels"
        if kind == "scores":
            what = (f"top-1 over the last axis ({d.shape_ref[-1]} entries) + cosine"
                    if d.top1_agreement is not None else "cosine (no class axis to take an argmax over)")
            return what + (forced or ": read as class scores (logits, or probabilities summing to 1; "
                                     "kind=values for coordinates)")
        if kind == "probabilities":
            return (f"decisions at > {self.threshold:g} over the {d.positives} elements either model calls positive + "
                    f"cosine" + (forced or ": values in [0, 1] not summing to 1 (a sigmoid / probability map, where an "
                                           "argmax picks among near-zero values)"))
        return "cosine" + (forced or ": one value per row, no decision to compare")

    def failure(self, d: OutputDiff, labelled: bool) -> str | None:
        if d.shape_ref != d.shape_other:
            return f"{d.name}: shape {list(d.shape_other)} where the reference has {list(d.shape_ref)}"
        if d.nonfinite_other > d.nonfinite_ref:
            return f"{d.name}: {d.nonfinite_other} NaN/Inf values"
        reasons = []
        if d.cosine < self.min_cosine:
            reasons.append(f"cosine {d.cosine:.4f} < {self.min_cosine:g}")
        agreement, what = self.agreement_of(d)
        if not labelled and agreement is not None and agreement < self.min_agreement:
            reasons.append(f"{what} {percent(agreement)} < {percent(self.min_agreement)} (ties within {TIE:.0%} forgiven)")
        return f"{d.name}: " + " and ".join(reasons) if reasons else None

    def describe(self) -> str:
        text = (f"agreement >= {percent(self.min_agreement)} (top-1 for class scores, thresholded decisions for "
                f"probabilities) and cosine >= {self.min_cosine:g} on every output "
                f"(with labels: accuracy drop <= {self.max_accuracy_drop * 100:g} point(s) and cosine)")
        if self.kind != "auto":
            text += f", every output judged as {self.kind}"
        for name, b in self.outputs:
            text += f"; {name}: agreement >= {percent(b.min_agreement)}, cosine >= {b.min_cosine:g}" + (
                f", judged as {b.kind}" if b.kind != "auto" else "")
        return text

    def to_json(self) -> dict:
        return {"kind": "budget", "min_agreement": self.min_agreement, "min_cosine": self.min_cosine,
                "max_accuracy_drop": self.max_accuracy_drop, "output_kind": self.kind, "threshold": self.threshold,
                "outputs": {n: {k: v for k, v in b.to_json().items() if k not in ("kind", "outputs")}
                            for n, b in self.outputs}}


Criterion = Exact | Budget


# -- the result --------------------------------------------------------------------------


@dataclass
class Verification:
    """Every output of a candidate against its reference, judged by one criterion."""

    criterion: Criterion
    outputs: list[OutputDiff]
    pairing: list[Pair] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    accuracy: dict | None = None   # {"output", "samples", "reference", "candidate", "drop"}
    samples: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    def score(self) -> float:
        """One number to rank candidates that miss a budget (0 is perfect): the worst output's
        cosine shortfall plus disagreement, plus the accuracy drop. Disagreement counts only where
        the criterion judges it: not with labels (the task replaces it) nor under a budget without
        an agreement floor (box regressors: the argmax of coordinates means nothing), and for each
        output the figure its budget judges (top-1 for class scores, thresholded decisions for
        probabilities): a search steered by the argmax of a probability map chases noise."""
        agreement = not (isinstance(self.criterion, Budget) and (self.accuracy is not None
                                                                  or self.criterion.min_agreement <= 0))
        if self.failures and not self.outputs:
            return math.inf  # nothing could be compared (a candidate that does not load): the farthest
        worst = 0.0
        for d in self.outputs:
            if d.shape_ref != d.shape_other or d.nonfinite_other > d.nonfinite_ref:
                return math.inf
            judged = d.judged_agreement if isinstance(self.criterion, Budget) else d.top1_agreement
            miss = (1.0 - d.cosine) + (1.0 - judged if agreement and judged is not None else 0.0)
            worst = max(worst, miss)
        if self.accuracy is not None:
            worst += max(0.0, self.accuracy["drop"])
        return worst

    def summary(self) -> str:
        parts = []
        for d in self.outputs:
            if d.kind == "probabilities" and d.decision_agreement is not None:
                agree = f", decisions {percent(d.decision_agreement)}"
            else:
                agree = f", top-1 {percent(d.top1_agreement)}" if d.top1_agreement is not None else ""
            parts.append(f"{d.name} cosine {d.cosine:.4f}{agree}")
        if self.accuracy is not None:
            a = self.accuracy
            parts.append(f"accuracy {percent(a['reference'])} -> {percent(a['candidate'])}")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "criterion": self.criterion.to_json(),
            "samples": self.samples,
            "pairing": [{"source": p.ref, "artifact": p.other, "by": p.how} for p in self.pairing],
            "outputs": {d.name: d.to_json() for d in self.outputs},
            "accuracy": self.accuracy,
            "failures": self.failures,
        }


class VerificationError(ShipyardError):
    """A written (or about to be written) model does not compute what its source computes.

    ``verification`` holds the figures; ``result`` whatever the command made (a conversion
    result, a quantization report) so the command can still print it.
    """

    exit_code = 1

    def __init__(self, what: str, verification: Verification, hint: str | None = None, result=None):
        super().__init__(f"{what} does not match its source ({verification.criterion.describe()}): "
                         + "; ".join(verification.failures),
                         hint=hint or "inspect the difference with 'shipyard compare'")
        self.verification = verification
        self.result = result


# -- feeds and outputs -------------------------------------------------------------------


def layout_permutations(ndim: int) -> list[tuple[int, ...]]:
    """Axis orders a converter legitimately applies to a tensor of rank ``ndim``: channels moved
    last (NCHW -> NHWC, what onnx2tf does to image inputs and outputs) and moved first."""
    if ndim < 3:
        return []
    return [(0, *range(2, ndim), 1), (0, ndim - 1, *range(1, ndim - 1))]


def _fits(shape: tuple[int, ...], spec_shape) -> bool:
    return len(shape) == len(spec_shape) and all(
        not (isinstance(d, int) and d >= 0) or d == s for s, d in zip(shape, spec_shape))


def relayout(value: np.ndarray, spec_shape) -> np.ndarray:
    """``value`` transposed to the candidate's layout when only a channel move makes it fit
    (the shape as given is preferred: a tensor that fits as it is is never transposed)."""
    if spec_shape is None or len(spec_shape) != value.ndim or _fits(value.shape, spec_shape):
        return value
    for perm in layout_permutations(value.ndim):
        if _fits(tuple(value.shape[i] for i in perm), spec_shape):
            return value.transpose(perm)
    return value


def restore_layout(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """A candidate's output back in the reference's layout when it differs by a channel move."""
    if ref.shape == other.shape or ref.ndim != other.ndim:
        return other
    for perm in layout_permutations(ref.ndim):
        if tuple(ref.shape[i] for i in perm) == other.shape:
            return other.transpose(np.argsort(perm))
    return other


def adapt_value(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Fit one input to the candidate's spec: a reshape of the same size (scalar -> [1]), a
    channel move (NCHW -> NHWC) and a dtype cast (bool -> int) are what converters legitimately
    change."""
    value = relayout(value, spec.shape)
    if spec.shape is not None and len(spec.shape) != value.ndim:
        target = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape)
        if target.count(-1) <= 1:
            try:
                value = value.reshape(target)
            except ValueError:
                pass  # not the same size: the runner's feed check names the mismatch
    if spec.quantization is not None and value.dtype.kind == "f":
        return value  # real values for an int8 input: the runner quantizes them with its scale
    if spec.dtype not in ("unknown", value.dtype.name) and value.dtype.kind != "U":
        value = value.astype(spec.dtype)
    return value


def adapt_feeds(feeds: Mapping[str, np.ndarray], ref: Signature, other: Signature) -> dict[str, np.ndarray]:
    """The reference's feeds keyed by the candidate's input names, each fitted to its spec."""
    pairs = pair_names([s.name for s in ref.inputs], [s.name for s in other.inputs], "input")
    by_ref = {tensor_name(k): v for k, v in feeds.items()}
    specs = {s.name: s for s in other.inputs}
    return {p.other: adapt_value(np.asarray(by_ref[tensor_name(p.ref)]), specs[p.other])
            for p in pairs if tensor_name(p.ref) in by_ref}


def collect(run: RunFn, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output over every feed, concatenated along the batch axis (stacked for scalars)."""
    parts: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        for name, value in run(feed).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) if v[0].ndim else np.stack(v) for k, v in parts.items()}


def model_outputs(model: Model | str, feeds: Feeds, reference: Signature | None = None,
                  backend: str | None = None, threads: int | None = None) -> tuple[Signature, dict[str, np.ndarray]]:
    """Run ``model`` on ``feeds`` (keyed by ``reference``'s input names when given)."""
    from shipyard.runtimes import open_runner
    from shipyard.runtimes.base import dequantize_outputs

    with open_runner(model, backend=backend, threads=threads) as runner:
        sig = runner.signature

        def run(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dequantize_outputs(sig, runner.run(feed if reference is None else adapt_feeds(feed, reference, sig)))

        return sig, collect(run, feeds)


def judge(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], criterion: Criterion,
          labels: np.ndarray | None = None, outputs: list[str] | None = None,
          check_budget: bool = True) -> Verification:
    """Pair every reference output with one candidate output and judge each. ``outputs``
    restricts the reference to the outputs the candidate was asked to keep. A Budget's per-output
    entries must name outputs of ``ref`` (``check_budget=False``: the caller checked them)."""
    if outputs:
        keep = {tensor_name(o) for o in outputs}
        chosen = {k: v for k, v in ref.items() if tensor_name(k) in keep}
        if len(chosen) != len(keep):
            raise InputError(f"output(s) {', '.join(sorted(keep - {tensor_name(k) for k in chosen}))} are not outputs "
                             f"of the reference", hint="its outputs: " + ", ".join(ref))
        ref = chosen
    if isinstance(criterion, Budget) and criterion.outputs and check_budget:
        criterion.check_outputs(ref)
    pairs = pair_names(list(ref), list(got))
    outputs: list[OutputDiff] = []
    failures: list[str] = []
    for p in pairs:
        a, b = np.asarray(ref[p.ref]), np.asarray(got[p.other])
        b = restore_layout(a, b)
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            if not np.array_equal(a, b):
                failures.append(f"{p.ref}: {a.dtype} values differ")
            continue
        crit = criterion.for_output(p.ref) if isinstance(criterion, Budget) else criterion
        atol, rtol = (crit.atol, crit.rtol) if isinstance(crit, Exact) else (1e-2, 1e-1)
        d = diff(p.ref, a.astype(np.float32) if a.dtype.kind == "b" else a,
                 b.astype(np.float32) if b.dtype.kind == "b" else b, atol, rtol,
                 threshold=crit.threshold if isinstance(crit, Budget) else 0.5)
        outputs.append(d)
        if isinstance(crit, Budget):
            d.judged_by = crit.why(d, labels is not None)
            if labels is None and crit.min_agreement > 0:
                d.judged_agreement = crit.agreement_of(d)[0]
        reason = crit.failure(d) if isinstance(crit, Exact) else crit.failure(d, labels is not None)
        if reason:
            failures.append(reason)
    samples = next((len(v) for v in ref.values() if np.ndim(v)), 0)
    accuracy = task_accuracy(labels, ref, got, pairs) if labels is not None else None
    if isinstance(criterion, Budget) and labels is not None:
        if accuracy is None:
            raise InputError(f"labels were given ({len(np.asarray(labels).reshape(-1))}) but no output holds one row of "
                             f"class scores per labelled sample (outputs: "
                             + ", ".join(f"{k} {list(np.shape(v))}" for k, v in ref.items()) + ")",
                             hint="give evaluation data without labels to judge by agreement with the float model")
        if accuracy["drop"] > criterion.max_accuracy_drop + 1e-12:
            failures.append(f"accuracy {percent(accuracy['reference'])} -> {percent(accuracy['candidate'])} "
                            f"(drop {accuracy['drop'] * 100:.2f} points > {criterion.max_accuracy_drop * 100:g})")
    return Verification(criterion, outputs, pairs, failures, accuracy, samples)


def task_accuracy(labels: np.ndarray, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                  pairs: list[Pair]) -> dict | None:
    """Top-1 accuracy of both models on the first output that holds one row of class scores per label."""
    lab = np.asarray(labels).reshape(-1)
    for p in pairs:
        a, b = np.asarray(ref[p.ref]), np.asarray(got[p.other])
        if a.ndim >= 2 and a.shape[-1] > 1 and a.size == len(lab) * a.shape[-1] and b.size == a.size:
            r = float(np.mean(a.reshape(len(lab), -1).argmax(-1) == lab))
            c = float(np.mean(b.reshape(len(lab), -1).argmax(-1) == lab))
            return {"output": p.ref, "samples": len(lab), "reference": r, "candidate": c, "drop": r - c}
    return None


def verify(reference: Model | str | tuple[Signature, RunFn], candidate: Model | str, feeds: Feeds,
           criterion: Criterion, labels: np.ndarray | None = None, backend: str | None = None,
           threads: int | None = None, outputs: list[str] | None = None) -> Verification:
    """Run reference and candidate on the same feeds and judge every output.

    ``reference`` is a model, or (signature, run function) for a source that is not a file
    (a live TF1 session, a PyTorch module).
    """
    if isinstance(reference, tuple):
        ref_sig, ref_run = reference
        ref = collect(ref_run, feeds)
    else:
        ref_sig, ref = model_outputs(reference, feeds, threads=threads)
    _, got = model_outputs(candidate, feeds, reference=ref_sig, backend=backend, threads=threads)
    result = judge(ref, got, criterion, labels, outputs)
    result.samples = len(feeds)
    return result
