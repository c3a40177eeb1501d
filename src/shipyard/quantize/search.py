"""Accuracy-aware quantization: find the fastest quantized model that stays inside a budget.

The engine-specific parts (how to build a quantized model with some settings and some nodes
kept in float, and how fast it runs) are passed in; the search is the same for onnxruntime
and the TFLite converter:

1. Each settings variant (per-channel, calibration method, QDQ vs QOperator...) is built with
   every node quantized and judged against the float model by the verification core.
   When some pass, the fastest of them is chosen.
2. Otherwise, on a graph with many candidates, stretches of it (REGIONS contiguous runs of
   candidates in graph order) are kept in float one at a time; a stretch that brings the model
   inside the budget is halved while a half still does (bisection: a few trials, where one per
   node over a 200-node model runs past the time box before it reaches the heads).
   When no stretch helps, the front of the graph is kept in float instead (prefixes of growing
   length): a model that computes its features in the graph (an audio model's filter bank and
   log-magnitude) loses them as a whole, and only as a whole do they come back.
3. Otherwise, starting from the variant closest to the budget, each candidate node's
   sensitivity is measured *at the model's outputs*: the model is rebuilt with only that node
   kept in float and the gain in the verification score is recorded. Every node kind counts
   (Concat, Reshape, Sigmoid, Add of detection heads as much as Conv and MatMul).
4. The most sensitive node is kept in float, the others are measured again on top of it, and
   so on (greedy forward selection) until the budget holds; a last pass drops any kept node
   the budget does not need.

Like NNCF's accuracy control and Intel Neural Compressor's tuning loop, but over whole-model
output figures from our one verification core, so the budget means the same thing for every
engine. No library does this across onnxruntime and TFLite, hence this module.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shipyard import guard
from shipyard.verify import Verification

MIN_SAMPLES = 16  # fewer cannot tell a 1% agreement drop from noise
RERANK = 16       # nodes measured again in each round after the first
REGIONS = 8       # stretches of the graph tried in float first, when it has more than...
MANY = 32         # ...this many candidates (one trial per node would not fit the time box)
FRONT = 8         # prefixes of the graph tried in float: 1/8, 2/8, ... 7/8 of its candidates


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
    kept_float: list[dict] = field(default_factory=list)    # the chosen float nodes, each with its gain when added
    seconds: float = 0.0
    stopped: str | None = None  # why the search ended before the budget held ("time": its time box ran out)

    @property
    def met(self) -> bool:
        return self.chosen.verification.passed

    def to_json(self) -> dict:
        return {"met": self.met, "chosen": self.chosen.to_json(), "kept_float": self.kept_float,
                "sensitivity": self.sensitivity[:20], "trials": [t.to_json() for t in self.trials],
                "seconds": round(self.seconds, 1), "stopped": self.stopped}


Build = Callable[[dict, tuple[str, ...]], Path]
Evaluate = Callable[[Path], Verification]
Latency = Callable[[Path], float]


class Search:
    """One search over ``variants`` (settings dicts) and ``candidates`` ({node name: op type})."""

    def __init__(self, build: Build, evaluate: Evaluate, latency: Latency | None, variants: list[dict],
                 candidates: dict[str, str], max_trials: int = 400, max_float_fraction: float = 0.5,
                 producers: dict[str, list[str]] | None = None, quantized: Callable[[Path], bool] | None = None,
                 max_seconds: float | None = None, cost: dict[str, int | None] | None = None):
        self.build, self.evaluate, self.latency = build, evaluate, latency
        self.variants, self.candidates = variants, candidates
        self.producers = producers or {}  # node -> the candidates feeding it (its neighbourhood)
        self.quantized = quantized        # whether a built model still computes anything in int8
        self.max_trials = max_trials
        # The time box: no trial starts after it (one under way finishes). A search that ran out of
        # time ends like one that ran out of trials: the closest model, judged, and why it stopped.
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        # A "quantized" model that keeps most of its nodes in float is the float model, slower:
        # past this share the budget is declared out of reach. The share is of the compute (FLOPs)
        # when the engine counted every candidate's: basic-pitch's float filter bank is 80% of the
        # nodes (Reshape, Pad, Unsqueeze around 24 small convolutions) and 8% of the FLOPs.
        self.max_float = max(1, int(len(candidates) * max_float_fraction))
        self.max_float_fraction = max_float_fraction
        known = cost is not None and all(cost.get(n) is not None for n in candidates)
        self.cost = {n: float(cost[n]) for n in candidates} if known else None
        self.total_cost = sum(self.cost.values()) if self.cost else 0.0
        if not self.total_cost:
            self.cost = None
        self.trials: list[Trial] = []
        self.front: tuple[str, ...] | None = None  # the float front _front kept (() when none; None: not tried)

    def _within_share(self, nodes) -> bool:
        """Whether keeping ``nodes`` in float stays inside the float share the search allows itself."""
        if self.cost is None:
            return len(set(nodes)) <= self.max_float
        return sum(self.cost.get(n, 0.0) for n in set(nodes)) <= self.max_float_fraction * self.total_cost

    def _exhausted(self) -> bool:
        return len(self.trials) >= self.max_trials or (
            self.max_seconds is not None and time.monotonic() - self.started >= self.max_seconds)

    def run(self) -> SearchResult:
        self.started = time.monotonic()
        result = self._run()
        result.seconds = time.monotonic() - self.started
        if not result.met and self._exhausted():
            result.stopped = ("time" if len(self.trials) < self.max_trials else "trials")
        return result

    def _try(self, settings: dict, kept: tuple[str, ...]) -> Trial:
        path = self.build(settings, kept)
        trial = Trial(settings, kept, self.evaluate(path), path)
        if kept and trial.verification.passed and self.quantized is not None and not self.quantized(path):
            # every computing node float: that is the float model again, not a quantized one
            trial.verification.failures.append("inside the budget only with every computing node in float")
        self.trials.append(trial)
        return trial

    def _run(self) -> SearchResult:
        # Variants come fastest first (the engine module orders them): the first that meets the
        # budget is the fastest one that does.
        first = []
        for i, settings in enumerate(self.variants):
            if first and self._exhausted():
                break
            guard.stage(f"quantizing: settings {i + 1}/{len(self.variants)} ({_label(settings)})")
            first.append(self._try(settings, ()))
            if first[-1].verification.passed:
                chosen = first[-1]
                if self.latency is not None:
                    chosen.latency_ms = self.latency(chosen.path)
                return SearchResult(chosen, self.trials)
        # Keep nodes in float on top of the closest variant of the fastest form (QOperator before
        # QDQ for onnxruntime): a slower form is only worth it when it meets the budget as it is.
        form = self.variants[0].get("quant_format")
        base = min((t for t in first if t.settings.get("quant_format") == form), key=lambda t: t.verification.score())
        chosen, sensitivity, kept_rows = self._keep_float(base)
        return SearchResult(chosen, self.trials, sensitivity, kept_rows)

    def _ancestors(self, name: str, depth: int) -> list[str]:
        """The candidates feeding ``name``, up to ``depth`` levels up (nearest first)."""
        out, level = [], [name]
        for _ in range(depth):
            level = [p for n in level for p in self.producers.get(n, ()) if p not in out and p != name]
            out += level
        return out

    def _rank(self, state: Trial, kept: tuple[str, ...], groups: int = 0,
              among: list[str] | None = None) -> list[tuple[dict, Trial]]:
        """Each remaining candidate added to ``kept`` in float, judged at the outputs: the gain
        in the verification score over ``state`` (models that pass first, then most gain).
        With ``groups`` = d, each candidate together with the candidates feeding it, d levels up."""
        base_score = state.verification.score()
        names = [n for n in (among if among is not None else self.candidates) if n not in kept]
        ranked = []
        for i, name in enumerate(names):
            if self._exhausted():
                break
            group = (name, *(p for p in self._ancestors(name, groups) if p not in kept)) if groups else (name,)
            if groups and (len(group) == 1 or (groups > 1 and len(group) == 1 + len(
                    [p for p in self._ancestors(name, groups - 1) if p not in kept]))):
                continue  # measured at a smaller depth already
            if not self._within_share((*kept, *group)):
                continue  # past the float share the search allows itself
            what = "nodes with their inputs" if groups else ("sensitivity at the outputs" if not kept
                                                             else f"node {len(kept) + 1} to keep in float")
            guard.stage(f"measuring {what}: {i + 1}/{len(names)}")
            t = self._try(state.settings, (*kept, *group))
            ranked.append(({"node": name, "op": self.candidates[name], "group": list(group[1:]),
                            "gain": base_score - t.verification.score(), "passes": t.verification.passed}, t))
        ranked.sort(key=lambda r: (not r[0]["passes"], -r[0]["gain"]))
        return ranked

    def _keep_float(self, base: Trial) -> tuple[Trial, list[dict], list[dict]]:
        """Greedy forward selection: keep in float the node whose float-ness helps the outputs
        most, re-measure the others on top of it, and so on until the budget holds (then drop
        any the budget does not need). Re-measuring each round finds nodes that only matter
        once another is float (the inputs of a Concat that was forced to one scale)."""
        front: tuple[str, ...] = ()
        if len(self.candidates) > MANY:
            found = self._regions(base)
            if found is None and self.front is None:
                found = self._front(base)
            front = self.front or ()
            if found is not None and found.verification.passed:
                return self._finish(found, [], fixed=front)
            if found is not None:  # the float front closes part of the gap: the per-node search goes on from it
                base = found
        kept: tuple[str, ...] = front
        state, sensitivity = base, []
        rows: list[dict] = [{"node": n, "op": self.candidates[n], "gain": None} for n in front]
        while self._within_share(kept) and not self._exhausted():
            # After the first full round, only the most sensitive nodes and the neighbours of
            # the kept ones are measured again: a round over every node of a MobileNet-size
            # model would spend the whole trial budget on two or three nodes.
            among = None if not sensitivity else list(dict.fromkeys(
                [r["node"] for r in sensitivity[:RERANK]] + [p for n in kept for p in self.producers.get(n, ())]
                + [n for n, feeds in self.producers.items() if set(feeds) & set(kept)]))
            ranked = self._rank(state, kept, among=among)
            if not sensitivity:
                sensitivity = [r for r, _ in ranked]
                if not (ranked and ranked[0][0]["passes"]):
                    together = self._prefix(state, sensitivity)
                    if together is not None:
                        for _, t in ranked:
                            t.path.unlink(missing_ok=True)
                        return self._finish(together, sensitivity)
            for depth in (1, 2):
                if not ranked or self._helps(ranked[0][0], state):
                    break
                # No single node more in float helps: nodes that only help together (a TFLite
                # CONCATENATION and the inputs it forces to its own scale). Try each node with
                # the candidates feeding it, one then two levels up.
                ranked = self._rank(state, kept, groups=depth) or ranked
            for _, t in ranked[1:]:
                t.path.unlink(missing_ok=True)  # only the round's winner is built upon
            if not ranked or not self._helps(ranked[0][0], state):
                break
            row, state = ranked[0]
            kept = state.kept_float
            rows += [{"node": n, "op": self.candidates[n], "gain": row["gain"] if n == row["node"] else None}
                     for n in (row["node"], *row["group"])]
            if state.verification.passed:
                state = self._prune(state, fixed=front)
                rows = [r for r in rows if r["node"] in state.kept_float]
                if self.latency is not None:
                    state.latency_ms = self.latency(state.path)
                return state, sensitivity, rows
        # out of reach: the closest model that was kept on disk
        closest = min((t for t in self.trials if t.path.exists()), key=lambda t: t.verification.score())
        return closest, sensitivity, []

    def _regions(self, base: Trial) -> Trial | None:
        """Group testing over the graph: REGIONS contiguous stretches of candidates (graph order)
        each kept in float; the best one is kept when it helps and the rest is split again, until a
        trial meets the budget; that stretch is then halved while a half still meets it. None when
        no stretch helps (the per-node search takes over). When the first round's best stretch only
        closes part of the gap, a float front (``_front``) is tried too, and returned (met or not)
        when it does better."""
        order = list(self.candidates)
        kept: tuple[str, ...] = ()
        state = base
        while not self._exhausted():
            rest = [n for n in order if n not in kept]
            size = max(1, -(-len(rest) // REGIONS))
            tried: list[tuple[list[str], Trial]] = []
            for i in range(0, len(rest), size):
                group = rest[i:i + size]
                if not self._within_share((*kept, *group)) or self._exhausted():
                    continue
                guard.stage(f"keeping a stretch of the graph in float: {i // size + 1}/{-(-len(rest) // size)}")
                tried.append((group, self._try(state.settings, (*kept, *group))))
                if tried[-1][1].verification.passed:
                    break  # a stretch that is enough: narrow it down rather than try the others
            if not tried:
                return None
            group, best = min(tried, key=lambda r: (not r[1].verification.passed, r[1].verification.score()))
            for _, t in tried:
                if t is not best:
                    t.path.unlink(missing_ok=True)
            if best.verification.passed:
                return self._bisect(kept, group, best)
            if best.verification.score() >= state.verification.score() * 0.99:
                return None  # no stretch closes 1% of the gap: not a matter of one region
            if not kept:
                # Stretches help a little each (basic-pitch as TFLite: round after round of them
                # spent the whole time box): a float front may be what they are approaching.
                front = self._front(base)
                if front is not None and front.verification.score() < best.verification.score():
                    best.path.unlink(missing_ok=True)
                    return front
                self.front = ()
                if front is not None:
                    front.path.unlink(missing_ok=True)
            kept, state = best.kept_float, best
        return None

    def _front(self, base: Trial) -> Trial | None:
        """The front of the graph kept in float, for a model whose first nodes compute features that
        only come back all together (a filter bank before a log: int8 rounds the quiet bins to zero).
        Prefixes of 1/FRONT, 2/FRONT... of the candidates (graph order) until one meets the budget;
        when none does, the best one that closes >= 1% of the gap, for the per-node search to finish;
        None when none helps. The front is then narrowed by bisection to the shortest one as good as
        the best, and remembered in ``self.front``."""
        self.front = ()
        order = list(self.candidates)
        tried: list[tuple[int, Trial]] = []
        for j in range(1, FRONT):
            k = len(order) * j // FRONT
            if k == 0 or (tried and k == tried[-1][0]):
                continue
            if self._exhausted() or not self._within_share(order[:k]):
                break
            guard.stage(f"keeping the front of the graph in float: {j}/{FRONT} of it")
            tried.append((k, self._try(base.settings, tuple(order[:k]))))
            if tried[-1][1].verification.passed:
                break
        if not tried:
            return None
        i = min(range(len(tried)), key=lambda r: (tried[r][1].verification.score(), r))
        (hi, best), lo = tried[i], (tried[i - 1][0] if i else 0)
        for _, t in tried:
            if t is not best:
                t.path.unlink(missing_ok=True)
        if not best.verification.passed and best.verification.score() >= base.verification.score() * 0.99:
            best.path.unlink(missing_ok=True)
            return None  # no front closes 1% of the gap
        # the shortest front as good as the best one: meeting the budget, or within 1% of its score
        bar = best.verification.score() * 1.01

        def as_good(t: Trial) -> bool:
            return t.verification.passed if best.verification.passed else t.verification.score() <= bar

        while hi - lo > 1 and not self._exhausted():
            mid = (lo + hi) // 2
            guard.stage(f"narrowing the float front: {mid} node(s)")
            t = self._try(best.settings, tuple(order[:mid]))
            if as_good(t):
                best.path.unlink(missing_ok=True)
                hi, best = mid, t
            else:
                t.path.unlink(missing_ok=True)
                lo = mid
        self.front = best.kept_float
        return best

    def _bisect(self, kept: tuple[str, ...], group: list[str], best: Trial) -> Trial:
        """Halve ``group`` (kept in float on top of ``kept``) while one half still meets the budget."""
        while len(group) > 1 and not self._exhausted():
            halves = (group[:len(group) // 2], group[len(group) // 2:])
            for half in halves:
                guard.stage(f"narrowing the float stretch: {len(half)} node(s)")
                t = self._try(best.settings, (*kept, *half))
                if t.verification.passed:
                    best.path.unlink(missing_ok=True)
                    group, best = half, t
                    break
                t.path.unlink(missing_ok=True)
            else:
                break  # both halves are needed
        return best

    def _prefix(self, base: Trial, sensitivity: list[dict]) -> Trial | None:
        """The k most sensitive nodes kept in float together, for the smallest k that meets the
        budget (a binary search over k, so log2(n) trials), or None when even the largest k the
        float share allows does not. Where many nodes each help a little (a detector's score
        head), this finds in a dozen trials what greedy rounds of re-measuring take hundreds for."""
        order = []
        for r in sensitivity:
            if r["gain"] > 0 and self._within_share((*order, r["node"])):
                order.append(r["node"])
        if len(order) < 2 or self._exhausted():
            return None
        guard.stage(f"keeping the {len(order)} most sensitive nodes in float together")
        best = self._try(base.settings, tuple(order))
        if not best.verification.passed:
            best.path.unlink(missing_ok=True)
            return None
        lo, hi = 1, len(order)  # the first hi nodes pass
        while lo < hi and not self._exhausted():
            mid = (lo + hi) // 2
            guard.stage(f"keeping the {mid} most sensitive nodes in float")
            t = self._try(base.settings, tuple(order[:mid]))
            if t.verification.passed:
                best.path.unlink(missing_ok=True)
                hi, best = mid, t
            else:
                t.path.unlink(missing_ok=True)
                lo = mid + 1
        return best

    def _finish(self, state: Trial, sensitivity: list[dict],
                fixed: tuple[str, ...] = ()) -> tuple[Trial, list[dict], list[dict]]:
        """Prune what the budget holds without (but ``fixed``), measure the latency, name the kept nodes."""
        state = self._prune(state, fixed)
        gains = {r["node"]: r["gain"] for r in sensitivity}
        rows = [{"node": n, "op": self.candidates[n], "gain": gains.get(n)} for n in state.kept_float]
        if self.latency is not None:
            state.latency_ms = self.latency(state.path)
        return state, sensitivity, rows

    @staticmethod
    def _helps(row: dict, state: Trial) -> bool:
        """A gain worth building on: it passes, or it closes at least 1% of the gap (smaller gains
        are the noise of a few flipped samples)."""
        return row["passes"] or row["gain"] > max(1e-9, 0.01 * state.verification.score())

    def _prune(self, best: Trial, fixed: tuple[str, ...] = ()) -> Trial:
        """Drop each kept node (least sensitive first) that the budget holds without. Nodes in
        ``fixed`` (a float front, already bisected to its shortest) are not tried one by one:
        a trial per Reshape of a 200-node front would spend the time box."""
        kept = list(best.kept_float)
        for name in reversed(list(best.kept_float)):
            if len(kept) <= 1 or self._exhausted():
                break
            if name in fixed:
                continue
            trial_kept = tuple(n for n in kept if n != name)
            t = self._try(best.settings, trial_kept)
            if t.verification.passed:
                kept, best = list(trial_kept), t
        return best


def _label(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
