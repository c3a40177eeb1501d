"""Error figures between a reference output and a candidate output, and the comparator that
runs several models on the same inputs and pairs their outputs.

The comparator core: ``shipyard compare`` and every verifying command build on it.
``diff()`` and ``OutputDiff`` keep their original fields and order (other commands call them);
newer figures (SNR, top-k agreement, the tolerances used) are appended with defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shipyard.errors import InputError, UsageError
from shipyard.model import Signature, tensor_name

TOP_K = 5


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


def diff(name: str, ref: np.ndarray, other: np.ndarray, atol: float = 1e-4, rtol: float = 1e-3) -> OutputDiff:
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
    agreement = topk = None
    if a.ndim >= 2 and a.shape[-1] > 1:
        agreement = float(np.mean(a64.argmax(-1) == b64.argmax(-1)))
        if a.shape[-1] > TOP_K:
            topk = _topk_agreement(a64, b64, TOP_K)
    passed = nonfinite == 0 and bool(np.all(err <= atol + rtol * np.abs(a64)))
    return OutputDiff(name, max_abs, mean_abs, max_rel, cosine, agreement, nonfinite, passed, a.shape, b.shape,
                      mean_rel=mean_rel, snr_db=_snr_db(a64, err) if err.size else None, topk_agreement=topk,
                      nonfinite_ref=bad_a, nonfinite_other=bad_b, atol=atol, rtol=rtol, rel_l2=rel_l2)


# -- tolerances ------------------------------------------------------------------------


@dataclass
class Tolerance:
    """A default value and per-output overrides, parsed from ``--atol 1e-3 --atol out0:1e-2``."""

    default: float
    per_output: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: list[str] | None, default: float, flag: str) -> Tolerance:
        tol = cls(default)
        for item in items or []:
            name, sep, value = item.rpartition(":")
            try:
                number = float(value)
            except ValueError as exc:
                raise UsageError(f"{flag} {item!r}: expected a number or OUTPUT:NUMBER (for example {flag} logits:1e-3)") from exc
            if sep:
                tol.per_output[tensor_name(name)] = number
            else:
                tol.default = number
        return tol

    def get(self, name: str) -> float:
        return self.per_output.get(tensor_name(name), self.default)


# -- pairing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    ref: str
    other: str
    how: str  # "name" or "position"


def _key(name: str) -> str:
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
    by_key = {_key(n): n for n in other}
    pairs: dict[str, Pair] = {}
    for n in ref:
        if _key(n) in by_key:
            pairs[n] = Pair(n, by_key[_key(n)], "name")
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


def adapt_feeds(feeds: dict[str, np.ndarray], ref: Signature, other: Signature) -> dict[str, np.ndarray]:
    """The reference model's feeds keyed by the other model's input names."""
    pairs = pair_names([s.name for s in ref.inputs], [s.name for s in other.inputs], "input")
    by_ref = {tensor_name(k): v for k, v in feeds.items()}
    return {p.other: by_ref[tensor_name(p.ref)] for p in pairs if tensor_name(p.ref) in by_ref}


# -- running models side by side -------------------------------------------------------


@dataclass
class Candidate:
    """One model (and the backend it ran on) compared against the reference."""

    path: str
    backend: str
    pairs: list[Pair]
    diffs: list[OutputDiff]

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.diffs)


@dataclass
class Comparison:
    reference: str
    reference_backend: str
    candidates: list[Candidate]
    inputs: dict[str, list[int]]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def to_json(self) -> dict:
        """``{"passed", "outputs": {name: metrics}}`` for the first candidate, plus every candidate."""
        first = self.candidates[0]
        return {
            "passed": self.passed,
            "reference": {"path": self.reference, "backend": self.reference_backend},
            "inputs": self.inputs,
            "outputs": {d.name: {**d.to_json(), "paired_with": p.other, "paired_by": p.how}
                        for p, d in zip(first.pairs, first.diffs)},
            "candidates": [
                {"path": c.path, "backend": c.backend, "passed": c.passed,
                 "outputs": {d.name: {**d.to_json(), "paired_with": p.other, "paired_by": p.how}
                             for p, d in zip(c.pairs, c.diffs)}}
                for c in self.candidates
            ],
        }


def model_feeds(signature: Signature, inputs: list[str] | None, seed: int = 0, batch: int = 1,
                shapes: dict | None = None, mapping: dict | None = None) -> dict[str, np.ndarray]:
    """The one place a comparison/dump/bench gets its inputs: files when given, else random.

    Kept in one function so that it can move to the ``shipyard.data`` sources later.
    """
    from shipyard.feeds import load_feeds, random_feeds

    if inputs:
        return load_feeds(inputs, signature, mapping)  # mapping: TFRecord feature -> input
    return random_feeds(signature, seed, batch, shapes)


def compare_models(models: list[str | Path], backends: list[str | None] | None = None,
                   inputs: list[str] | None = None, seed: int = 0, batch: int = 1,
                   atol: Tolerance | None = None, rtol: Tolerance | None = None,
                   threads: int | None = None, shapes: dict | None = None, mapping: dict | None = None) -> Comparison:
    """Run every model on the same inputs and compare each against the first."""
    from shipyard.runtimes import open_runner
    from shipyard.runtimes.base import dequantize_outputs

    if len(models) < 2:
        raise UsageError("compare needs at least two models (or one model and two --backend values)")
    backends = backends or [None] * len(models)
    atol = atol or Tolerance(1e-4)
    rtol = rtol or Tolerance(1e-3)
    with open_runner(models[0], backend=backends[0], threads=threads) as ref_runner:
        ref_sig = ref_runner.signature
        feeds = model_feeds(ref_sig, inputs, seed, batch, shapes, mapping)
        ref_out = dequantize_outputs(ref_sig, ref_runner.run(feeds))  # int8 outputs as real values
        ref_backend = ref_runner.backend
    candidates = []
    for path, backend in zip(models[1:], backends[1:]):
        with open_runner(path, backend=backend, threads=threads) as runner:
            out = dequantize_outputs(runner.signature, runner.run(adapt_feeds(feeds, ref_sig, runner.signature)))
            pairs = pair_names(list(ref_out), list(out))
            diffs = [diff(p.ref, ref_out[p.ref], out[p.other], atol.get(p.ref), rtol.get(p.ref)) for p in pairs]
            candidates.append(Candidate(str(path), runner.backend, pairs, diffs))
    return Comparison(str(models[0]), ref_backend, candidates, {k: list(v.shape) for k, v in feeds.items()})
