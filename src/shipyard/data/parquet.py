"""Samples from a Parquet file (pyarrow): one row per sample, each numeric column an input
(matched by name, or renamed with a mapping). A column holds a scalar or a list of numbers
per row (all rows the same length), reshaped to the input's per-sample shape like a TFRecord
feature; a ``label``/``labels``/``y`` column gives the labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.data.tfrecord import RecordSource
from shipyard.errors import InputError, MissingDependencyError

PARQUET_MAGIC = b"PAR1"


def looks_like_parquet(path: Path) -> bool:
    """Parquet files start and end with ``PAR1``."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != PARQUET_MAGIC:
                return False
            fh.seek(-4, 2)
            return fh.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "ray", "reading Parquet files") from None
    return pq


def parquet_schema(path: Path) -> dict[str, str]:
    """{column: arrow type} from the file footer, without reading any data."""
    pq = _pyarrow()
    import pyarrow as pa

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:  # a damaged or truncated file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    return {field.name: str(field.type) for field in schema}


def read_columns(path: Path, mapping: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Every numeric column as one array (rows first); list columns must not be ragged."""
    import pyarrow as pa

    pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    arrays: dict[str, np.ndarray] = {}
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            continue  # strings, binary (encoded images), structs are not tensors
        if column.null_count:
            raise InputError(f"{path}: column '{name}' has {column.null_count} missing value(s)")
        array = _dense(column.combine_chunks() if column.num_chunks != 1 else column.chunk(0), len(table))
        if array is None:
            raise InputError(f"{path}: column '{name}' has different lengths from row to row")
        arrays[(mapping or {}).get(name, name)] = array
    if not arrays:
        raise InputError(f"{path}: no numeric columns in the Parquet file")
    return arrays


class ParquetSource(RecordSource):
    """Columns as arrays; the TFRecord source's reshaping to each input's per-sample shape applies."""

    def __init__(self, path: Path, mapping: dict[str, str] | None = None):
        from shipyard.data.arrays import LABEL_KEYS, ArraySource
        from shipyard.data.images import Preprocess

        arrays = read_columns(path, mapping)
        labels = next((k for k in LABEL_KEYS if k in arrays), None)
        if labels is not None:
            arrays["labels"] = arrays.pop(labels).reshape(-1)
        self.images: set[str] = set()  # binary columns (encoded images) are not read yet
        self.preprocess = Preprocess()
        ArraySource.__init__(self, path, arrays)
        self.description = f"{path} (Parquet)"

    def _missing(self, missing: list[str]) -> InputError:
        return InputError(f"{self.path}: no column feeds input(s) {', '.join(missing)} (columns: {', '.join(self.arrays)})",
                          hint="map columns to inputs with --map COLUMN=INPUT")


def _dense(array, rows: int) -> np.ndarray | None:
    """A (nested) list column as one [rows, values...] array without a Python loop per row;
    None when the lists are ragged."""
    import pyarrow as pa

    per_row = 1
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        if not pa.types.is_fixed_size_list(array.type):
            lengths = np.diff(np.asarray(array.offsets))
            if lengths.size and (lengths != lengths[0]).any():
                return None
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    if rows:
        per_row = values.size // rows
        if per_row * rows != values.size:
            return None
    return values.reshape(rows, per_row) if values.size != rows else values
