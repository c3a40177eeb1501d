"""Intermediate tensors as ``dump`` writes them and ``compare --layerwise`` reads them.

The engines do the work: a runner opened with ``intermediates=True`` lists its tensors in
execution order and fetches any subset (see :mod:`shipyard.runtimes.base`), as the engine holds
them (int8 for a quantized tensor), with the scale and zero point the engine reports
(``runner.quantization(name)``). This module fetches in chunks, which is what lets
``compare --layerwise`` stream through a large model in bounded memory, and turns int8 values
into real numbers before anything is computed on them.
"""
from __future__ import annotations

import numpy as np

from shipyard.model import Quantization, dequantize
from shipyard.runtimes.base import Runner


def dump_tensors(source: Runner, feeds: dict[str, np.ndarray], names: list[str] | None = None,
                 chunk: int = 64) -> dict[str, np.ndarray]:
    """Values of ``names`` (all intermediates when None), fetched ``chunk`` tensors per run."""
    wanted = source.resolve(names) if names else [t.name for t in source.tensors()]
    values: dict[str, np.ndarray] = {}
    for start in range(0, len(wanted), chunk):
        values.update(source.fetch(feeds, wanted[start:start + chunk]))
    return values


def real_values(source: Runner, values: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Quantization]]:
    """Fetched values as real numbers: each int8/uint8 tensor the engine reports a scale and zero
    point for is dequantized (``(q - zero_point) * scale``, per channel where it is). Returns the
    values and the quantization of the tensors that were dequantized."""
    real: dict[str, np.ndarray] = {}
    used: dict[str, Quantization] = {}
    for name, value in values.items():
        q = source.quantization(name) if np.asarray(value).dtype.kind in "iu" else None
        real[name] = dequantize(value, q)
        if q is not None:
            used[name] = q
    return real, used


def npz_entries(raw: dict[str, np.ndarray], real: dict[str, np.ndarray],
                quantized: dict[str, Quantization]) -> dict[str, np.ndarray]:
    """What ``dump`` writes: every tensor's real values under its name; for a quantized tensor
    also ``NAME#quantized`` (the engine's integers), ``NAME#scale``, ``NAME#zero_point`` and,
    per channel, ``NAME#axis``."""
    entries: dict[str, np.ndarray] = {}
    for name, value in real.items():
        entries[name] = value
        q = quantized.get(name)
        if q is not None:
            entries[f"{name}#quantized"] = raw[name]
            entries[f"{name}#scale"] = np.asarray(q.scale, np.float64)
            entries[f"{name}#zero_point"] = np.asarray(q.zero_point, np.int64)
            if q.axis is not None:
                entries[f"{name}#axis"] = np.asarray(q.axis, np.int64)
    return entries
