"""`shipyard batch`: a model over a sharded dataset, on this machine or on Ray, exactly once.

``shards`` (what the inputs are, checked before any work) · ``worker`` (one runner, one shard
at a time) · ``output`` (a shard's predictions as one atomic file) · ``manifest`` (the job, what
is done, resuming) · ``job`` (orchestration, progress, summary) · ``ray_runner`` (Ray Data).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_outputs(out: str | Path) -> dict[str, np.ndarray]:
    """Every finished shard's outputs of a batch directory, concatenated in input order
    (``example_index`` restarts at 0 in each shard)."""
    import json

    from shipyard.batch import output
    from shipyard.batch.manifest import NAME

    data = json.loads((Path(out) / NAME).read_text())
    parts: dict[str, list[np.ndarray]] = {}
    for shard in sorted(data["shards"]):
        for name, value in output.read(Path(out) / data["shards"][shard]["output"]).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}
