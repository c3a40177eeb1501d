"""Error figures between a reference output and a candidate output.

The comparator core: ``shipyard compare`` and every verifying command build on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def diff(name: str, ref: np.ndarray, other: np.ndarray, atol: float = 1e-4, rtol: float = 1e-3) -> OutputDiff:
    """Compare two arrays elementwise; passes when ``|a-b| <= atol + rtol*|a|`` everywhere."""
    a = np.asarray(ref)
    b = np.asarray(other)
    if a.shape != b.shape and a.size == b.size:
        b = b.reshape(a.shape)
    if a.shape != b.shape:
        return OutputDiff(name, float("inf"), float("inf"), float("inf"), 0.0, None, 0, False, a.shape, b.shape)
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    nonfinite = int((~np.isfinite(a64)).sum() + (~np.isfinite(b64)).sum())
    err = np.abs(a64 - b64)
    max_abs = float(err.max()) if err.size else 0.0
    mean_abs = float(err.mean()) if err.size else 0.0
    max_rel = float((err / np.maximum(np.abs(a64), 1e-12)).max()) if err.size else 0.0
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    cosine = float(np.dot(a64.ravel(), b64.ravel()) / (na * nb)) if na and nb else float(na == nb)
    agreement = None
    if a.ndim >= 2 and a.shape[-1] > 1:
        agreement = float(np.mean(a64.argmax(-1) == b64.argmax(-1)))
    passed = nonfinite == 0 and bool(np.all(err <= atol + rtol * np.abs(a64)))
    return OutputDiff(name, max_abs, mean_abs, max_rel, cosine, agreement, nonfinite, passed, a.shape, b.shape)
