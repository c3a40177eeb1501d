"""Authenticated encryption of model files (AES-256-GCM, from the ``cryptography`` package).

File layout: a small header, then the ciphertext with its 16-byte tag. The whole header is
authenticated (GCM associated data), so changing any byte of the file - header or body -
fails authentication::

    magic "SHIPYENC" | version u8 | algorithm u8 | nonce (12) | kind u8 (0 file, 1 tar of a
    directory) | format (u8 length + ascii) | original name (u16 length + utf-8)

Decryption happens in memory only: loaders take the plaintext bytes, never a temporary file.
"""
from __future__ import annotations

import base64
import io
import os
import struct
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shipyard.errors import ShipyardError, UsageError

MAGIC = b"SHIPYENC"
VERSION = 1
AES_256_GCM = 1
KEY_ENV = "SHIPYARD_MODEL_KEY_FILE"
KIND_FILE, KIND_DIR = 0, 1


class AuthenticationError(ShipyardError):
    """Wrong key, or a file that was changed after it was encrypted."""


@dataclass(frozen=True)
class Header:
    version: int
    algorithm: int
    nonce: bytes
    kind: int
    format: str
    name: str
    raw: bytes


def is_encrypted(head: bytes) -> bool:
    return head.startswith(MAGIC)


# ---------------------------------------------------------------- keys


def generate_key(path: Path) -> Path:
    """Write a new random 256-bit key (base64), readable by its owner only; never overwrite."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{path}: already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def read_key(path: Path | None = None, purpose: str = "this model is encrypted: give its key") -> bytes:
    """The key from ``path`` or from $SHIPYARD_MODEL_KEY_FILE: 32 raw bytes, hex or base64.
    ``purpose``: what to say when there is none (reading an encrypted model, or encrypting one)."""
    path = path or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if path is None:
        raise UsageError(purpose, hint=f"--key-file KEY or ${KEY_ENV}=KEY (make one with: shipyard keygen -o KEY)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: the key file cannot be read ({exc.strerror})") from exc
    if len(data) == 32:
        return data
    text = data.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            continue
        if len(key) == 32:
            return key
    raise UsageError(f"{path}: not a 256-bit key (expected 32 bytes, raw, hex or base64)", hint="make one with: shipyard keygen -o KEY")


# ---------------------------------------------------------------- encrypt / decrypt


def _header(kind: int, fmt: str, name: str, nonce: bytes) -> bytes:
    fmt_b, name_b = fmt.encode("ascii"), name.encode("utf-8")
    return (MAGIC + bytes([VERSION, AES_256_GCM]) + nonce + bytes([kind, len(fmt_b)]) + fmt_b
            + struct.pack("<H", len(name_b)) + name_b)


def parse_header(data: bytes) -> Header:
    try:
        if not data.startswith(MAGIC):
            raise ValueError("magic")
        pos = len(MAGIC)
        version, algorithm = data[pos], data[pos + 1]
        nonce = data[pos + 2 : pos + 14]
        kind, flen = data[pos + 14], data[pos + 15]
        pos += 16
        fmt = data[pos : pos + flen].decode("ascii")
        pos += flen
        (nlen,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + nlen].decode("utf-8")
        pos += 2 + nlen
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise AuthenticationError("authentication failed: the encrypted file's header is damaged") from exc
    # The format name is checked against the known formats by whoever reads it (sniff).
    if (version != VERSION or algorithm != AES_256_GCM or len(nonce) != 12 or kind not in (KIND_FILE, KIND_DIR)
            or not fmt):
        raise AuthenticationError("authentication failed: the encrypted file's header is damaged or from a newer shipyard")
    return Header(version, algorithm, nonce, kind, fmt, name, data[:pos])


def _tar(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, item in sorted(files.items()):
            tar.add(item, arcname=name)
    return buf.getvalue()


def folder_files(src: Path) -> dict[str, Path]:
    """Every file of a model folder ({path relative to it: path}); a link out of it is refused."""
    files = {}
    root = src.resolve()
    for p in src.rglob("*"):
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            raise UsageError(f"{p}: a link out of the model's folder (to {p.resolve()}); refusing to encrypt it")
        if p.is_file():
            files[str(p.relative_to(src))] = p
    return files


def encrypt_model(src: Path, fmt: str, key: bytes, files: dict[str, Path] | None = None) -> bytes:
    """The encrypted file's bytes for a model file or folder. ``files``: the files of a model
    that is several files ({name: path}; see :func:`shipyard.formats.model_files`), else a
    folder's files or the one file."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    src = Path(src)
    if files is None and src.is_dir():
        files = folder_files(src)
    kind = KIND_DIR if files is not None else KIND_FILE
    payload = _tar(files) if files is not None else src.read_bytes()
    nonce = os.urandom(12)
    header = _header(kind, fmt, src.name, nonce)
    return header + AESGCM(key).encrypt(nonce, payload, header)


def decrypt_bytes(data: bytes, key: bytes) -> tuple[Header, bytes]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = parse_header(data)
    try:
        plain = AESGCM(key).decrypt(header.nonce, data[len(header.raw) :], header.raw)
    except InvalidTag as exc:
        raise AuthenticationError("authentication failed: wrong key, or the file was modified after encryption") from exc
    return header, plain


@lru_cache(maxsize=4)
def _decrypted(path: str, mtime_ns: int, size: int, key: bytes) -> tuple[Header, bytes]:
    return decrypt_bytes(Path(path).read_bytes(), key)


def decrypted(path: Path, key: bytes | None = None) -> tuple[Header, bytes]:
    """(header, plaintext) of an encrypted model file; cached so one command decrypts once."""
    st = Path(path).stat()
    return _decrypted(str(path), st.st_mtime_ns, st.st_size, key or read_key())


def untar(payload: bytes, path: Path | str = "the encrypted model") -> dict[str, bytes]:
    """Files of an encrypted directory, in memory: {relative path: bytes}."""
    from shipyard.errors import ModelFormatError

    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelFormatError(f"{path}: the decrypted model folder is not a readable tar archive ({exc})") from exc
