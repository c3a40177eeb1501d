"""One shard's predictions as one file, written atomically: Parquet (one row per example, an
``example_index`` column, each output a column; multi-dimensional outputs as fixed-size lists
with their per-example shape in the schema metadata) or ``.npz`` (one array per output).

The bytes depend only on the predictions, so local and Ray runs of a job write identical files,
and a shard computed twice (a retried Ray task) replaces its file with the same content.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from shipyard.atomic import atomic_path
from shipyard.errors import InputError, MissingDependencyError

INDEX = "example_index"
FORMATS = {"parquet": ".parquet", "npz": ".npz"}
_META_KEY = b"shipyard.batch"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(path: Path, outputs: dict[str, np.ndarray], count: int, fmt: str) -> None:
    """Write ``outputs`` (each [count, ...]) to ``path`` atomically."""
    if fmt == "npz":
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{INDEX: np.arange(count, dtype=np.int64)}, **outputs)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "ray", "writing Parquet outputs") from None
    columns, shapes = {INDEX: pa.array(np.arange(count, dtype=np.int64))}, {}
    for name, value in outputs.items():
        per_row = list(value.shape[1:])
        shapes[name] = {"dtype": value.dtype.name, "shape": per_row}
        flat = pa.array(np.ascontiguousarray(value).reshape(-1))
        columns[name] = flat if not per_row else pa.FixedSizeListArray.from_arrays(flat, int(np.prod(per_row)))
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(shapes, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=False)  # predictions rarely repeat: dictionary tries cost 2x


def read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one output file, ``example_index`` included, in their original shapes."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    out = {}
    for name, column in zip(table.column_names, table.columns):
        array = column.combine_chunks()
        if name in meta and meta[name]["shape"]:
            values = array.flatten().to_numpy(zero_copy_only=False)
            out[name] = values.reshape(len(array), *meta[name]["shape"]).astype(meta[name]["dtype"], copy=False)
        else:
            out[name] = array.to_numpy(zero_copy_only=False)
    return out


def check_batch_axis(outputs: dict[str, np.ndarray], count: int, shard: str) -> None:
    """Every output must have one row per example: one that does not cannot be split by example."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != count:
            raise InputError(f"{shard}: output '{name}' has shape {list(value.shape)} for {count} examples; "
                             "batch outputs need one row per example")
