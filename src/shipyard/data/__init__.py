"""Input sources for calibration and evaluation: arrays (.npy/.npz), TFRecord, image folders, random.

Every source has the same small interface (:class:`FeedSource`): ``feeds(signature)``
yields one feed dict per sample, keyed by the model's input names, and ``labels`` holds
class labels when the source has them. ``open_source`` picks one from a path; a new kind
of source (a TFRecord reader, say) only needs to implement the protocol and a branch there.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from shipyard.errors import InputError
from shipyard.model import Signature


@runtime_checkable
class FeedSource(Protocol):
    description: str
    measured: bool  # False for made-up data: accuracy cannot be judged on it
    labels: np.ndarray | None

    def feeds(self, signature: Signature) -> Iterator[dict[str, np.ndarray]]: ...


def open_source(path: str | Path | None, count: int = 32, seed: int = 0, image_options: dict | None = None,
                mapping: dict[str, str] | None = None) -> FeedSource:
    """A source for ``path``: a folder of images, a .npy/.npz file, a TFRecord file of
    tf.train.Examples or a Parquet file (``mapping`` renames features/columns to inputs), or
    random data when None."""
    if path is None:
        from shipyard.data.random import RandomSource

        return RandomSource(count, seed)
    path = Path(path)
    if path.is_dir():
        from shipyard.data.images import ImageFolderSource

        return ImageFolderSource(path, **(image_options or {}))
    if not path.exists():
        raise InputError(f"{path}: no such calibration file or folder")
    if path.suffix in (".npy", ".npz"):
        from shipyard.data.arrays import ArraySource

        return ArraySource(path)
    from shipyard.data.parquet import looks_like_parquet

    if looks_like_parquet(path):
        from shipyard.data.parquet import ParquetSource

        return ParquetSource(path, mapping)
    from shipyard.records import looks_like_tfrecord

    if looks_like_tfrecord(path):
        from shipyard.data.tfrecord import RecordSource

        return RecordSource(path, mapping)
    raise InputError(f"{path}: calibration data must be a .npy/.npz file, a TFRecord or Parquet file or a folder of images")


def take(source: FeedSource, signature: Signature, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Up to ``limit`` samples, each checked against the signature (name, dtype, rank, shape)."""
    from shipyard.runtimes.base import validate_feeds

    out = []
    for i, feed in enumerate(source.feeds(signature)):
        if limit is not None and i >= limit:
            break
        try:
            out.append(validate_feeds(signature, feed))
        except InputError as exc:
            raise InputError(f"{source.description}, sample {i}: {exc.message}", hint=exc.hint) from exc
    if not out:
        raise InputError(f"{source.description}: the calibration set is empty")
    return out
