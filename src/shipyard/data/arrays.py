"""Samples from ``.npy`` (one input; first axis = samples) or ``.npz`` (keys = input names,
plus an optional ``labels`` array)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shipyard.errors import InputError
from shipyard.model import Signature

# The one list of names a labels array/feature/column goes by (.npz keys, TFRecord features, Parquet columns).
LABEL_KEYS = ("labels", "label", "y", "image/class/label")


def load_array(path: Path) -> np.ndarray:
    """A .npy array or an open .npz file, with a clean error for a missing or damaged file."""
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such input file") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz array file ({exc})") from exc
    return value


class ArraySource:
    measured = True

    def __init__(self, path: Path, arrays: dict[str, np.ndarray] | None = None):
        self.path = path
        self.description = f"{path}"
        if arrays is None:
            value = load_array(path)
            if isinstance(value, np.lib.npyio.NpzFile):
                with value:
                    arrays = {k: value[k] for k in value.files}
            else:
                arrays = {"": value}
        self.labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
        if not arrays:
            raise InputError(f"{path}: no input arrays in the file")
        counts = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
        if len(set(counts.values())) != 1:
            raise InputError(f"{path}: the arrays hold different numbers of samples ({counts})")
        self.arrays = arrays
        self.count = next(iter(counts.values()))

    def _columns(self, signature: Signature, matched: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """{input name: the array feeding it}, samples along the first axis (``matched``: key -> input)."""
        arrays = dict(self.arrays)
        if "" in arrays:
            if len(signature.inputs) != 1:
                raise InputError(f"{self.path}: the model has {len(signature.inputs)} inputs; give a .npz keyed by input name",
                                 hint="inputs: " + ", ".join(s.name for s in signature.inputs))
            arrays = {signature.inputs[0].name: arrays.pop("")}
        if matched is None:
            matched = match_keys(list(arrays), signature)
        missing = [s.name for s in signature.inputs if s.name not in matched.values()]
        if missing:
            raise self._missing(missing)
        return {matched[k]: v for k, v in arrays.items() if k in matched}

    def _missing(self, missing: list[str]) -> InputError:
        return InputError(f"{self.path}: no array for input(s) {', '.join(missing)}", hint="keys: " + ", ".join(self.arrays))

    def feeds(self, signature: Signature) -> Iterator[dict[str, np.ndarray]]:
        columns = self._columns(signature)
        for i in range(self.count):
            yield {name: _sample(v, i, signature.input(name)) for name, v in columns.items()}

    def batches(self, signature: Signature, size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(samples, feeds) per run of ``size`` samples: what ``feeds`` yields, concatenated on the
        batch axis, sliced from the arrays without a Python step per sample (``shipyard batch``)."""
        columns = self._columns(signature)
        for start in range(0, self.count, size):
            stop = min(start + size, self.count)
            feeds = {}
            for name, v in columns.items():
                spec = signature.input(name)
                if spec is not None and spec.shape is not None and v.ndim == len(spec.shape) + 1:
                    v = v[start:stop].reshape(-1, *v.shape[2:])  # each sample is a whole model call already
                else:
                    v = v[start:stop]
                feeds[name] = v
            yield stop - start, feeds


def match_keys(keys: list[str], signature: Signature) -> dict[str, str]:
    """Array key -> input name: exact (``x`` = ``x:0``), then a converter's prefix
    (``image`` = TFLite's ``serving_default_image:0``), then one array for a one-input model."""
    out: dict[str, str] = {}
    for key in keys:
        spec = signature.resolve_input(key)
        if spec is not None:
            out[key] = spec.name
    if not out and len(keys) == 1 and len(signature.inputs) == 1:
        out[keys[0]] = signature.inputs[0].name
    return out


def _sample(array: np.ndarray, i: int, spec) -> np.ndarray:
    """Sample ``i`` with a batch axis of 1, unless the array is already one sample per model call."""
    if spec is not None and spec.shape is not None and array.ndim == len(spec.shape) + 1:
        return array[i]
    return array[i : i + 1]
