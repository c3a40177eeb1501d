"""Samples from a TFRecord file of ``tf.train.Example``s: each numeric feature is an input
(matched by name, or renamed with a mapping), reshaped to the input's per-sample shape; a
``label``/``labels``/``y``/``image/class/label`` feature gives the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.data.arrays import LABEL_KEYS, ArraySource, match_keys
from shipyard.errors import InputError
from shipyard.model import Signature

_LABELS = LABEL_KEYS + ("image/class/label",)


class RecordSource(ArraySource):
    measured = True

    def __init__(self, path: Path, mapping: dict[str, str] | None = None, limit: int | None = None):
        from shipyard import records, tf_example

        columns: dict[str, list[np.ndarray]] = {}
        first_missing: dict[str, int] = {}  # feature -> the first record without it
        count = 0
        for i, data in enumerate(records.iter_records(path)):
            if limit is not None and i >= limit:
                break
            for name, value in tf_example.decode(data).items():
                if isinstance(value, list):  # bytes features (encoded images, names) are not tensors
                    continue
                key = (mapping or {}).get(name, name)
                if len(columns.setdefault(key, [])) < i:
                    first_missing.setdefault(key, len(columns[key]))
                columns[key].append(value)
            count = i + 1
        if not columns:
            raise InputError(f"{path}: no numeric tf.train.Example features in the file (or no records)")
        for key, values in columns.items():  # a feature absent from some records would shift every sample after it
            if len(values) < count:
                where = first_missing.get(key, len(values))
                raise InputError(f"{path}: feature '{key}' is missing from {count - len(values)} of {count} records "
                                 f"(first: record {where})")
        sizes = {k: {v.size for v in vs} for k, vs in columns.items()}
        ragged = [k for k, s in sizes.items() if len(s) > 1]
        if ragged:
            raise InputError(f"{path}: features {', '.join(ragged)} have different lengths from record to record")
        arrays = {k: np.stack(vs) for k, vs in columns.items()}
        labels = next((k for k in _LABELS if k in arrays), None)
        if labels is not None:
            arrays["labels"] = arrays.pop(labels).reshape(-1)
        super().__init__(path, arrays)
        self.description = f"{path} (TFRecord)"

    def _columns(self, signature: Signature) -> dict[str, np.ndarray]:
        matched = match_keys(list(self.arrays), signature)
        for key, name in matched.items():  # flat Example values -> the input's per-sample shape
            spec = signature.input(name)
            if spec is not None and spec.shape is not None:
                per_sample = [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape[1:]]
                try:
                    self.arrays[key] = self.arrays[key].reshape([len(self.arrays[key]), *per_sample]).astype(
                        spec.dtype if spec.dtype not in ("unknown", "string") else self.arrays[key].dtype)
                except ValueError as exc:
                    raise InputError(f"{self.path}: feature '{key}' ({self.arrays[key].shape[1:]} values per record) "
                                     f"does not fit input '{name}' {list(spec.shape)}") from exc
        return super()._columns(signature)
