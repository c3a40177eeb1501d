"""Random inputs generated from a signature: for run/compare/bench when no data is given, and for
calibration (accuracy is then not measured)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shipyard.errors import InputError, UnsupportedError
from shipyard.model import Signature, TensorSpec, tensor_name

MAX_GENERATED_ELEMENTS = 2**28  # 1 GiB of float32: a declared shape above this is a damaged or a huge model


def random_array(spec: TensorSpec, rng: np.random.Generator, batch: int = 1, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if shape is None:
        if spec.shape is None:
            raise InputError(
                f"the shape of input '{spec.name}' is unknown, so no input can be generated for it",
                hint=f"give it: --shape {spec.name}=1,3,224,224 (or --inputs {spec.name}=FILE.npy)",
            )
        dims = list(spec.shape)
        shape = tuple(
            d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(dims)
        )
    count = int(np.prod([max(int(d), 0) for d in shape], dtype=object)) if shape else 1
    if count > MAX_GENERATED_ELEMENTS:
        raise InputError(
            f"input '{spec.name}' has shape {list(shape)} ({count:.3g} elements): too large to generate random "
            f"values for (the limit is {MAX_GENERATED_ELEMENTS:,} elements)",
            hint=f"give a smaller shape: --shape {spec.name}=D0,D1,.. (or --inputs {spec.name}=FILE.npy)",
        )
    dtype = np.dtype("float32") if spec.dtype in ("unknown",) else None
    if spec.dtype == "string":
        raise UnsupportedError(f"input '{spec.name}' is a string tensor; give it with --inputs {spec.name}=FILE.npy")
    dtype = dtype or np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise UnsupportedError(f"cannot generate values of dtype {spec.dtype} for input '{spec.name}'")


def random_feeds(signature: Signature, seed: int = 0, batch: int = 1,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Reproducible random inputs (dynamic batch dimension = ``batch``, other dynamic dims = 1)."""
    rng = np.random.default_rng(seed)
    shapes = {tensor_name(k): v for k, v in (shapes or {}).items()}
    return {s.name: random_array(s, rng, batch, shapes.get(tensor_name(s.name))) for s in signature.inputs}



class RandomSource:
    measured = False
    labels = None

    def __init__(self, count: int = 32, seed: int = 0):
        self.count = count
        self.seed = seed
        self.description = "random data"

    def feeds(self, signature: Signature) -> Iterator[dict]:
        for i in range(self.count):
            yield random_feeds(signature, self.seed + i, batch=1)
