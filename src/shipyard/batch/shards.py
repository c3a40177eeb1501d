"""Input shards of a batch job: what ``--inputs`` names, what kind each is, and the check that
every shard has the same schema and feeds every model input, done before any work starts.

A shard is the unit of work and of output: one TFRecord, Parquet, .npy or .npz file, or one
folder of images. Reading a shard reuses the data layer (:mod:`shipyard.data`); this module
only probes the cheap part of each file (the first record, the Parquet footer, the .npz keys).
"""
from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from shipyard.errors import InputError, UsageError
from shipyard.model import Signature

KINDS = ("tfrecord", "parquet", "arrays", "images")


@dataclass(frozen=True)
class Shard:
    path: str  # absolute
    kind: str
    size: int  # bytes (a folder: the sum of its images)
    mtime_ns: int

    def to_dict(self) -> dict:
        return asdict(self)


def expand(patterns: list[str]) -> list[Shard]:
    """The shards ``--inputs`` names (globs, files, image folders), sorted, each once."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise InputError(f"--inputs {pattern}: matches no file or folder")
        paths.extend(Path(m) for m in matches)
    seen: dict[str, Shard] = {}
    for path in paths:
        real = str(path.absolute().resolve())
        if real not in seen:
            seen[real] = _shard(Path(real))
    shards = sorted(seen.values(), key=lambda s: s.path)
    kinds = {s.kind for s in shards}
    if len(kinds) > 1:
        raise InputError("--inputs mixes kinds of data (" + ", ".join(f"{k}: {_first(shards, k)}" for k in sorted(kinds)) + ")",
                         hint="give one kind of shard per job")
    return shards


def _first(shards: list[Shard], kind: str) -> str:
    return Path(next(s.path for s in shards if s.kind == kind)).name


def _shard(path: Path) -> Shard:
    from shipyard.data.images import EXTENSIONS
    from shipyard.data.parquet import looks_like_parquet
    from shipyard.records import looks_like_tfrecord

    if path.is_dir():
        images = [p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
        if not images:
            raise InputError(f"{path}: a folder given as input must hold images")
        stats = [p.stat() for p in images]
        return Shard(str(path), "images", sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))
    if not path.is_file():
        raise InputError(f"{path}: not a file or folder")
    stat = path.stat()
    if path.suffix in (".npy", ".npz"):
        kind = "arrays"
    elif looks_like_parquet(path):
        kind = "parquet"
    elif stat.st_size and looks_like_tfrecord(path):
        kind = "tfrecord"
    else:
        raise InputError(f"{path}: not a TFRecord, Parquet, .npy or .npz file (nor a folder of images)")
    return Shard(str(path), kind, stat.st_size, stat.st_mtime_ns)


def probe(shard: Shard) -> dict[str, str]:
    """{feature name: what describes its values} from the cheap part of the shard."""
    import numpy as np

    if shard.kind == "images":
        return {"<image>": "image"}
    if shard.kind == "parquet":
        from shipyard.data.parquet import parquet_schema

        return parquet_schema(Path(shard.path))
    if shard.kind == "tfrecord":
        from shipyard import records, tf_example

        first = next(iter(records.iter_records(Path(shard.path))), None)
        if first is None:
            return {}
        out = {}
        for name, value in tf_example.decode(first).items():
            out[name] = "bytes" if isinstance(value, list) else f"{value.dtype} x{value.size}"
        return out
    from shipyard.data.arrays import load_array

    value = load_array(Path(shard.path))
    if isinstance(value, np.lib.npyio.NpzFile):
        with value:
            return {k: "array" for k in value.files}
    return {"": "array"}


def check_schemas(shards: list[Shard], signature: Signature, mapping: dict[str, str]) -> dict[str, str]:
    """The schema every shard shares; refuses mixed schemas and inputs no feature feeds."""
    from shipyard.data.arrays import LABEL_KEYS, match_keys

    raw = probe(shards[0])
    for shard in shards[1:]:
        other = probe(shard)
        if other != raw:
            diff = sorted(set(raw.items()) ^ set(other.items()))
            raise InputError(f"mixed schemas: {Path(shard.path).name} differs from {Path(shards[0].path).name} in "
                             + ", ".join(f"{k} ({v})" for k, v in diff[:6]),
                             hint="every shard of a job must have the same features")
    if mapping and shards[0].kind in ("images", "arrays"):
        raise UsageError("--map renames TFRecord features and Parquet columns; .npz keys must be input names")
    unused = [k for k in mapping if k not in raw]
    if unused:
        raise UsageError(f"--map {unused[0]}=...: no feature '{unused[0]}' in {Path(shards[0].path).name}",
                         hint="features: " + ", ".join(raw))
    first = {mapping.get(k, k): v for k, v in raw.items()}
    if shards[0].kind == "images":
        if len(signature.inputs) != 1:
            raise InputError(f"an image folder can only feed a one-input model; this one has {len(signature.inputs)}")
        return first
    if not first:
        raise InputError(f"{Path(shards[0].path).name}: holds no records")
    numeric = [k for k, v in first.items() if v != "bytes" and k not in LABEL_KEYS]
    if not numeric:
        raise InputError(f"{Path(shards[0].path).name}: no numeric feature to feed the model (features: "
                         + ", ".join(first) + ")")
    if numeric == [""]:  # a .npy: one array for a one-input model
        if len(signature.inputs) != 1:
            raise InputError(f"{Path(shards[0].path).name}: the model has {len(signature.inputs)} inputs; "
                             "give .npz files keyed by input name")
        return first
    matched = match_keys(numeric, signature)
    missing = [s.name for s in signature.inputs if s.name not in matched.values()]
    if missing:
        raise InputError(f"no feature feeds input(s) {', '.join(missing)} (features: {', '.join(numeric)})",
                         hint="name the feature for each input: --map FEATURE=INPUT")
    return first
