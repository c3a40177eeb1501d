"""TFRecord files, read and written without TensorFlow.

Framing of each record: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, all little-endian; a GZIP file is the same stream, gzipped.
Every CRC is checked on read, and a damaged or truncated file raises an error naming the
record and its byte offset instead of returning wrong data. An index (``offset length`` per
line, as the ``tfrecord`` package writes it) gives counts without a scan and random access.
"""
from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from shipyard.errors import ModelFormatError

_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"


class RecordError(ModelFormatError):
    """A TFRecord file that is truncated or whose checksums do not match."""


def masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such TFRecord file")
    return path


def is_gzip(path: Path) -> bool:
    with open(_require_file(path), "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open(path: Path, compressed: bool | None = None) -> BinaryIO:
    path = _require_file(path)
    if compressed is None:
        compressed = is_gzip(path)
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def iter_records(path: Path, check_crc: bool = True) -> Iterator[bytes]:
    """The payload of every record, in order."""
    with _open(path) as fh:
        yield from _read_stream(fh, Path(path), check_crc)


def _read_stream(fh: BinaryIO, path: Path, check_crc: bool) -> Iterator[bytes]:
    offset = index = 0
    while True:
        try:
            header = fh.read(12)
        except (OSError, EOFError) as exc:  # a truncated gzip stream
            raise RecordError(f"{path}: compressed data ends early or is corrupt near record {index} ({exc})") from exc
        if not header:
            return
        if len(header) < 12:
            raise RecordError(f"{path}: truncated record {index} at byte offset {offset} (header cut short)")
        length, length_crc = struct.unpack("<QI", header)
        if check_crc and masked_crc(header[:8]) != length_crc:
            raise RecordError(f"{path}: corrupt record {index} at byte offset {offset}: length checksum mismatch")
        try:
            body = fh.read(length + 4)
        except (OSError, EOFError) as exc:
            raise RecordError(f"{path}: compressed data ends early or is corrupt in record {index} ({exc})") from exc
        if len(body) < length + 4:
            raise RecordError(f"{path}: truncated record {index} at byte offset {offset} "
                              f"({len(body)} of {length + 4} bytes present)")
        data = body[:length]
        if check_crc and masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            raise RecordError(f"{path}: corrupt record {index} at byte offset {offset}: data checksum mismatch")
        yield data
        offset += 12 + length + 4
        index += 1


def write_records(path: Path, records: Iterable[bytes], compressed: bool = False) -> int:
    """Write records to ``path`` (atomically); returns how many were written."""
    from shipyard.atomic import atomic_path

    count = 0
    with atomic_path(Path(path)) as tmp:
        opener = gzip.open if compressed else open
        with opener(tmp, "wb") as fh:
            for data in records:
                length = struct.pack("<Q", len(data))
                fh.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))
                count += 1
    return count


def index_path(path: Path) -> Path:
    return Path(str(path) + ".index")


def build_index(path: Path) -> list[tuple[int, int]]:
    """(offset, length of the whole framed record) of each record of an uncompressed file.

    Checks the length checksums while it walks the headers but skips over the data.
    """
    if is_gzip(path):
        raise RecordError(f"{path}: a GZIP TFRecord cannot be indexed for random access; decompress it first")
    entries = []
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset < size:
            header = fh.read(12)
            if len(header) < 12:
                raise RecordError(f"{path}: truncated record {len(entries)} at byte offset {offset}")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise RecordError(f"{path}: corrupt record {len(entries)} at byte offset {offset}: length checksum mismatch")
            framed = 12 + length + 4
            if offset + framed > size:
                raise RecordError(f"{path}: truncated record {len(entries)} at byte offset {offset}")
            entries.append((offset, framed))
            offset += framed
            fh.seek(offset)
    return entries


def write_index(path: Path) -> Path:
    from shipyard.atomic import atomic_path, check_output_path

    out = check_output_path(index_path(path), path)
    entries = build_index(path)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(f"{o} {n}\n" for o, n in entries))
    return out


def read_index(path: Path) -> list[tuple[int, int]] | None:
    """The index next to ``path`` if there is one and it is not older than the file."""
    idx = index_path(path)
    if not idx.is_file() or idx.stat().st_mtime < Path(path).stat().st_mtime:
        return None
    try:
        return [(int(a), int(b)) for a, b in (line.split() for line in idx.read_text().splitlines() if line.strip())]
    except ValueError as exc:
        raise RecordError(f"{idx}: not a TFRecord index (lines of 'offset length')") from exc


def count(path: Path) -> tuple[int, str]:
    """(number of records, how it was counted): from the index without a scan, else a header walk."""
    _require_file(path)
    entries = read_index(path)
    if entries is not None:
        return len(entries), "index"
    if is_gzip(path):
        return sum(1 for _ in iter_records(path, check_crc=False)), "gzip scan"
    return len(build_index(path)), "scan"


def read_at(path: Path, number: int) -> bytes:
    """Record ``number`` by random access through the index."""
    entries = read_index(path)
    if entries is None:
        raise RecordError(f"{path}: no up-to-date index", hint=f"shipyard records index {path}")
    if not 0 <= number < len(entries):
        raise RecordError(f"{path}: record {number} does not exist ({len(entries)} records)")
    offset, framed = entries[number]
    with open(path, "rb") as fh:
        fh.seek(offset)
        return next(_read_stream(io.BytesIO(fh.read(framed)), Path(path), True))


def looks_like_tfrecord(path: Path) -> bool:
    """True when the first record's length checksum holds (gzip files are opened first)."""
    try:
        with _open(path) as fh:
            header = fh.read(12)
    except (OSError, EOFError, RecordError):
        return False
    return len(header) == 12 and masked_crc(header[:8]) == struct.unpack("<I", header[8:])[0]
