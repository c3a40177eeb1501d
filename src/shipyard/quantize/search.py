"""Accuracy-aware quantization: find the fastest quantized model that stays inside a budget.

The engine-specific parts (how to build a quantized model with some settings and some nodes
kept in float, and how fast it runs) are passed in; the search is the same for onnxruntime
and the TFLite converter:

1. Each settings variant (per-channel, calibration method, QDQ vs QOperator...) is built with
   every node quantized and judged against the float model by the verification core.
   When some pass, the fastest of them is chosen.
2. Otherwise, starting from the variant closest to the budget, each candidate node's
   sensitivity is measured *at the model's outputs*: the model is rebuilt with only that node
   kept in float and the gain in the verification score is recorded. Every node kind counts
   (Concat, Reshape, Sigmoid, Add of detection heads as much as Conv and MatMul).
3. The most sensitive nodes are kept in float, doubling their number until the budget holds,
   then bisecting down to the fewest; a last pass drops any kept node the budget does not need.

Like NNCF's accuracy control and Intel Neural Compressor's tuning loop, but over whole-model
output figures from our one verification core, so the budget means the same thing for every
engine. No library does this across onnxruntime and TFLite, hence this module.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shipyard import guard
from shipyard.verify import Verification

MIN_SAMPLES = 16  # fewer cannot tell a 1% agreement drop from noise


@dataclass
class Trial:
    settings: dict
    kept_float: tuple[str, ...]
    verification: Verification
    path: Path
    latency_ms: float | None = None

    def to_json(self) -> dict:
        return {"settings": self.settings, "kept_float": list(self.kept_float), "passed": self.verification.passed,
                "score": round(self.verification.score(), 6), "summary": self.verification.summary(),
                "failures": self.verification.failures, "latency_ms": self.latency_ms}


@dataclass
class SearchResult:
    chosen: Trial
    trials: list[Trial] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)   # node, op, gain (score saved by keeping it float)
    kept_float: list[dict] = field(default_factory=list)    # the chosen float nodes with what each cost

    @property
    def met(self) -> bool:
        return self.chosen.verification.passed

    def to_json(self) -> dict:
        return {"met": self.met, "chosen": self.chosen.to_json(), "kept_float": self.kept_float,
                "sensitivity": self.sensitivity[:20], "trials": [t.to_json() for t in self.trials]}


Build = Callable[[dict, tuple[str, ...]], Path]
Evaluate = Callable[[Path], Verification]
Latency = Callable[[Path], float]


class Search:
    """One search over ``variants`` (settings dicts) and ``candidates`` ({node name: op type})."""

    def __init__(self, build: Build, evaluate: Evaluate, latency: Latency | None, variants: list[dict],
                 candidates: dict[str, str], max_trials: int = 400, max_float_fraction: float = 0.5):
        self.build, self.evaluate, self.latency = build, evaluate, latency
        self.variants, self.candidates = variants, candidates
        self.max_trials = max_trials
        # A "quantized" model that keeps most of its nodes in float is the float model, slower:
        # past this share the budget is declared out of reach.
        self.max_float = max(1, int(len(candidates) * max_float_fraction))
        self.trials: list[Trial] = []

    def _try(self, settings: dict, kept: tuple[str, ...], keep_file: bool = True) -> Trial:
        path = self.build(settings, kept)
        trial = Trial(settings, kept, self.evaluate(path), path)
        self.trials.append(trial)
        if not keep_file and not trial.verification.passed:
            path.unlink(missing_ok=True)  # a sensitivity probe: only its figures are needed
        return trial

    def run(self) -> SearchResult:
        # Variants come fastest first (the engine module orders them): the first that meets the
        # budget is the fastest one that does.
        first = []
        for i, settings in enumerate(self.variants):
            guard.stage(f"quantizing: settings {i + 1}/{len(self.variants)} ({_label(settings)})")
            first.append(self._try(settings, ()))
            if first[-1].verification.passed:
                chosen = first[-1]
                if self.latency is not None:
                    chosen.latency_ms = self.latency(chosen.path)
                return SearchResult(chosen, self.trials)
        base = min(first, key=lambda t: t.verification.score())
        sensitivity = self._sensitivity(base)
        chosen, kept_rows = self._keep_float(base, sensitivity)
        return SearchResult(chosen, self.trials, sensitivity, kept_rows)

    def _sensitivity(self, base: Trial) -> list[dict]:
        """Gain in the verification score when each node alone stays float (most gain first)."""
        base_score = base.verification.score()
        rows = []
        names = list(self.candidates)
        for i, name in enumerate(names):
            if len(self.trials) >= self.max_trials:
                break
            guard.stage(f"measuring sensitivity at the outputs: node {i + 1}/{len(names)}")
            t = self._try(base.settings, (name,), keep_file=False)
            rows.append({"node": name, "op": self.candidates[name], "gain": base_score - t.verification.score(),
                         "passes_alone": t.verification.passed})
        rows.sort(key=lambda r: -r["gain"])
        return rows

    def _keep_float(self, base: Trial, sensitivity: list[dict]) -> tuple[Trial, list[dict]]:
        alone = next((r for r in sensitivity if r["passes_alone"]), None)
        order = [r["node"] for r in sensitivity]
        if alone is not None:
            best = next(t for t in self.trials if t.kept_float == (alone["node"],) and t.settings == base.settings)
        else:
            best = self._grow(base, order)
        if best is None:  # out of reach: the closest model that was kept on disk
            return min((t for t in self.trials if t.path.exists()), key=lambda t: t.verification.score()), []
        best = self._prune(best)
        gain = {r["node"]: r for r in sensitivity}
        rows = [{"node": n, "op": self.candidates.get(n, "?"), "gain_alone": gain[n]["gain"] if n in gain else None}
                for n in best.kept_float]
        if self.latency is not None:
            best.latency_ms = self.latency(best.path)
        return best, rows

    def _grow(self, base: Trial, order: list[str]) -> Trial | None:
        """Keep the top-k sensitive nodes in float: k doubles until the budget holds, then bisects."""
        order = order[: self.max_float]
        low, high, passing = 1, None, None
        k = min(2, len(order))
        while k <= len(order) and k > 1:
            guard.stage(f"keeping the {k} most sensitive nodes in float")
            t = self._try(base.settings, tuple(order[:k]))
            if t.verification.passed:
                high, passing = k, t
                break
            low = k
            if k == len(order) or len(self.trials) >= self.max_trials:
                break
            k = min(2 * k, len(order))
        if passing is None:
            return None
        while high - low > 1 and len(self.trials) < self.max_trials:
            mid = (low + high) // 2
            t = self._try(base.settings, tuple(order[:mid]))
            if t.verification.passed:
                high, passing = mid, t
            else:
                low = mid
        return passing

    def _prune(self, best: Trial) -> Trial:
        """Drop each kept node (least sensitive first) that the budget holds without."""
        kept = list(best.kept_float)
        for name in reversed(list(best.kept_float)):
            if len(kept) <= 1 or len(self.trials) >= self.max_trials:
                break
            trial_kept = tuple(n for n in kept if n != name)
            t = self._try(best.settings, trial_kept)
            if t.verification.passed:
                kept, best = list(trial_kept), t
        return best


def _label(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
