"""``shipyard compare``: run several models (any formats, any engines) on the same inputs and
judge each against the first, with per-output tolerances.

The figures, the pairing rule and the feed adapter are the verification core's
(:mod:`shipyard.verify`); this module adds the tolerances of the command line and the runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shipyard.errors import UsageError
from shipyard.model import Signature, tensor_name
from shipyard.verify import OutputDiff, Pair, adapt_feeds, diff, pair_names

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

    def check(self, names: list[str], flag: str) -> None:
        """Every OUTPUT named in a per-output tolerance must be one of ``names``: a misspelt one
        would otherwise leave that output on the default tolerance without a word."""
        import difflib

        known = {tensor_name(n) for n in names}
        for name in self.per_output:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                raise UsageError(f"{flag} {name}:...: the reference has no output '{name}'"
                                 + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""),
                                 hint="its outputs: " + ", ".join(sorted(known)[:12]))


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
    from shipyard.data.random import random_feeds
    from shipyard.feeds import load_feeds

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
    atol.check(list(ref_out), "--atol")
    rtol.check(list(ref_out), "--rtol")
    candidates = []
    for path, backend in zip(models[1:], backends[1:]):
        with open_runner(path, backend=backend, threads=threads) as runner:
            out = dequantize_outputs(runner.signature, runner.run(adapt_feeds(feeds, ref_sig, runner.signature)))
            pairs = pair_names(list(ref_out), list(out))
            diffs = [diff(p.ref, ref_out[p.ref], out[p.other], atol.get(p.ref), rtol.get(p.ref)) for p in pairs]
            candidates.append(Candidate(str(path), runner.backend, pairs, diffs))
    return Comparison(str(models[0]), ref_backend, candidates, {k: list(v.shape) for k, v in feeds.items()})
