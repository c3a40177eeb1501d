"""Samples from a TFRecord file of ``tf.train.Example``s: the one TFRecord -> model inputs path
(calibration, evaluation, ``--inputs`` of run/compare/bench/dump, batch shards).

Each numeric feature is an input (matched by name, or renamed with a mapping), reshaped to the
input's per-sample shape. A bytes feature holding encoded images (``image/encoded``, as
``shipyard records write --images`` and TF's image datasets write them) is decoded and
preprocessed like an image folder (``data/images.Preprocess``). A label feature
(``data/arrays.LABEL_KEYS``) gives the labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.data.arrays import LABEL_KEYS, ArraySource, match_keys
from shipyard.errors import InputError
from shipyard.model import Signature


class RecordSource(ArraySource):
    measured = True
    kind = "TFRecord"

    def __init__(self, path: Path, mapping: dict[str, str] | None = None, limit: int | None = None,
                 image_options: dict | None = None):
        from shipyard import records, tf_example
        from shipyard.data.images import looks_like_image

        columns: dict[str, list] = {}
        first_missing: dict[str, int] = {}  # feature -> the first record without it
        count = 0
        self.images: set[str] = set()  # features that hold encoded images (decoded once the input is known)
        for i, data in enumerate(records.iter_records(path)):
            if limit is not None and i >= limit:
                break
            for name, value in tf_example.decode(data).items():
                key = (mapping or {}).get(name, name)
                if isinstance(value, list):  # bytes: encoded images are inputs, names and ids are not
                    if len(value) != 1 or not looks_like_image(value[0]):
                        continue
                    value = value[0]
                    self.images.add(key)
                if len(columns.setdefault(key, [])) < i:
                    first_missing.setdefault(key, len(columns[key]))
                columns[key].append(value)
            count = i + 1
        if not columns:
            raise InputError(f"{path}: no numeric or encoded-image tf.train.Example features in the file (or no records)")
        for key, values in columns.items():  # a feature absent from some records would shift every sample after it
            if len(values) < count:
                where = first_missing.get(key, len(values))
                raise InputError(f"{path}: feature '{key}' is missing from {count - len(values)} of {count} records "
                                 f"(first: record {where})")
        ragged = [k for k, vs in columns.items() if k not in self.images and len({v.size for v in vs}) > 1]
        if ragged:
            raise InputError(f"{path}: features {', '.join(ragged)} have different lengths from record to record")
        arrays = {k: (np.array(vs, dtype=object) if k in self.images else np.stack(vs)) for k, vs in columns.items()}
        labels = next((k for k in LABEL_KEYS if k in arrays and k not in self.images), None)
        if labels is not None:
            values = arrays.pop(labels).reshape(-1)
            if (values >= 0).all():  # ``records write --images`` marks an image outside a class folder with -1
                arrays["labels"] = values
        from shipyard.data.images import Preprocess

        self.preprocess = Preprocess(**(image_options or {}))
        super().__init__(path, arrays)
        self.description = f"{path} (TFRecord)"

    def _columns(self, signature: Signature) -> dict[str, np.ndarray]:
        matched = match_keys(list(self.arrays), signature)
        if not matched and len(self.images) == 1 and len(signature.inputs) == 1:
            matched = {next(iter(self.images)): signature.inputs[0].name}  # image/encoded -> the one image input
        for key, name in matched.items():  # flat Example values -> the input's per-sample shape
            spec = signature.input(name)
            if key in self.images:
                if self.arrays[key].dtype == object:  # decode once; later calls reuse the arrays
                    where = f"{self.path}: feature '{key}'"
                    self.arrays[key] = np.stack([self.preprocess.sample(v, spec, where) for v in self.arrays[key]])
                continue
            if spec is not None and spec.shape is not None:
                per_sample = [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape[1:]]
                try:
                    self.arrays[key] = self.arrays[key].reshape([len(self.arrays[key]), *per_sample]).astype(
                        spec.dtype if spec.dtype not in ("unknown", "string") else self.arrays[key].dtype)
                except ValueError as exc:
                    raise InputError(f"{self.path}: feature '{key}' ({self.arrays[key].shape[1:]} values per record) "
                                     f"does not fit input '{name}' {list(spec.shape)}") from exc
        return super()._columns(signature, matched)

    def _missing(self, missing: list[str]) -> InputError:
        return InputError(f"{self.path}: no feature feeds input(s) {', '.join(missing)} "
                          f"(features: {', '.join(k for k in self.arrays) or 'none'})",
                          hint="map features to inputs with --map FEATURE=INPUT")

    def stacked(self, signature: Signature) -> dict[str, np.ndarray]:
        """Every record at once, stacked on the batch axis: one model call (``--inputs FILE.tfrecord``)."""
        return self._columns(signature)
