"""Verify a converted artifact against its source: same inputs in, outputs compared.

Names rarely survive a conversion (Keras ``probs`` becomes ``Identity:0`` in ONNX and
``StatefulPartitionedCall:0`` in TFLite), so inputs and outputs are paired by name where
they match and by position otherwise; the pairing is part of the result.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from shipyard.compare import OutputDiff, diff
from shipyard.errors import InputError
from shipyard.feeds import random_feeds
from shipyard.model import Model, Signature, TensorSpec, tensor_name

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Verification:
    passed: bool
    outputs: list[OutputDiff]
    pairing: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "pairing": [{"source": a, "artifact": b} for a, b in self.pairing],
            "outputs": {d.name: d.to_json() for d in self.outputs},
        }


def pair(src: tuple[TensorSpec, ...], dst: tuple[TensorSpec, ...]) -> list[tuple[TensorSpec, TensorSpec]]:
    """Pair specs by canonical name when every artifact name is found in the source (the
    artifact may keep a subset, e.g. after choosing outputs), else by position."""
    src_by_name = {tensor_name(s.name): s for s in src}
    if all(tensor_name(d.name) in src_by_name for d in dst):
        return [(src_by_name[tensor_name(d.name)], d) for d in dst]
    if len(src) != len(dst):
        raise InputError(
            f"the artifact has {len(dst)} tensors where the source has {len(src)}: "
            f"source {[s.name for s in src]}, artifact {[s.name for s in dst]}"
        )
    return list(zip(src, dst))


def adapt(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Fit a source input to the artifact's spec: a reshape of the same size (scalar -> [1])
    and a dtype cast (bool -> int) are what converters legitimately change."""
    if spec.shape is not None and len(spec.shape) != value.ndim:
        target = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape)
        if target.count(-1) <= 1:
            value = value.reshape(target)
    if spec.dtype not in ("unknown", value.dtype.name):
        value = value.astype(spec.dtype)
    return value


def verify(source_sig: Signature, source_run: RunFn, artifact: Model, feeds: Mapping[str, np.ndarray] | None = None,
           atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0, batch: int = 2) -> Verification:
    """Run source and artifact on the same inputs and compare every output."""
    from shipyard.runtimes import open_runner

    feeds = dict(feeds) if feeds is not None else random_feeds(source_sig, seed=seed, batch=batch)
    expected = source_run(feeds)
    with open_runner(artifact) as runner:
        in_pairs = pair(source_sig.inputs, runner.signature.inputs)
        got = runner.run({d.name: adapt(feeds[s.name], d) for s, d in in_pairs})
        out_pairs = pair(source_sig.outputs, runner.signature.outputs)
    diffs = [diff(s.name, expected[s.name], got[d.name], atol, rtol) for s, d in out_pairs]
    return Verification(all(d.passed for d in diffs), diffs, [(s.name, d.name) for s, d in out_pairs])

