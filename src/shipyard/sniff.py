"""Recognise a model by what its bytes say, not by its file extension.

Only a few hundred bytes are read (plus a directory listing), so sniffing a 2 GB file is
instant. Parsing errors of a file that *looks* right (a truncated ONNX file, say) are found
later by the format's parser; sniffing says what an unrecognised file looks like instead.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from shipyard.errors import ModelFormatError
from shipyard.formats.openvino_ir import looks_like_ir
from shipyard.formats.registry import FORMATS
from shipyard.formats.tf_memmapped import SUFFIX as MEMMAPPED_SUFFIX
from shipyard.formats.tf_memmapped import looks_memmapped
from shipyard.formats.tf_protos import looks_like_text_proto
from shipyard.formats.torch_checkpoint import LEGACY_MAGIC, is_safetensors
from shipyard.formats.torch_export import is_export_archive
from shipyard.model import Model

_HEAD = 512
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SSTABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")  # leveldb table footer (checkpoint .index)
_EXPECTED = ", ".join(FORMATS)


def sniff(path: Path) -> Model:
    """Return the :class:`Model` at ``path`` or raise :class:`ModelFormatError` saying why not."""
    path = Path(path)
    if path.is_dir():
        return _sniff_dir(path)
    if not path.exists():
        ckpt = _checkpoint_from_prefix(path)
        if ckpt is not None:
            return ckpt
        raise ModelFormatError(f"{path}: no such file or directory")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(_HEAD)
            if size >= 8:
                fh.seek(-8, 2)
                tail = fh.read(8)
            else:
                tail = b""
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise ModelFormatError(f"{path}: the file is empty (0 bytes); expected a model ({_EXPECTED})")
    return _sniff_file(path, head, tail, size)


def _sniff_file(path: Path, head: bytes, tail: bytes, size: int) -> Model:
    from shipyard import protect

    if protect.is_encrypted(head) or sum(a != b for a, b in zip(head[:8], protect.MAGIC)) == 1:
        header = protect.parse_header(head if len(head) < _HEAD else path.read_bytes()[:1024])
        if header.format not in FORMATS:
            raise protect.AuthenticationError("authentication failed: the encrypted file's header is damaged "
                                              "or from a newer shipyard")
        return Model(header.format, path, {"encrypted": path})
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return Model("tflite", path)
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head.startswith(_HDF5_MAGIC):
        return Model("keras", path)
    if tail == _SSTABLE_MAGIC or path.name.endswith(".index") or ".data-" in path.name:
        ckpt = _checkpoint_from_prefix(_checkpoint_prefix_of(path))
        if ckpt is not None:
            return ckpt
    # Before ONNX/GraphDef: it starts with raw weights or a GraphDef. It has no magic number, so a
    # damaged one is known by its name (its parser then says what is wrong).
    if looks_memmapped(path, tail, size) or (path.suffix == MEMMAPPED_SUFFIX and not _looks_like_onnx(head)):
        return Model("tf-memmapped", path)
    if _looks_like_onnx(head):
        return Model("onnx", path)
    if head.startswith(LEGACY_MAGIC) or is_safetensors(head, size):
        return Model("torch-checkpoint", path)
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return _sniff_json(path)
    if looks_like_ir(head):
        return Model("openvino-ir", path)
    if looks_like_text_proto(head):
        return Model("tf-graphdef", path)
    if path.name == "saved_model.pb":
        return _sniff_dir(path.parent)
    if head[:1] == b"\x0a":
        meta_ckpt = _checkpoint_from_prefix(path.with_suffix("")) if path.suffix == ".meta" else None
        if meta_ckpt is not None:
            return meta_ckpt
        # A binary GraphDef or MetaGraphDef (field 1, length-delimited): the tf_graph parser decides.
        return Model("tf-graphdef", path)
    raise ModelFormatError(
        f"{path}: not a model shipyard recognises; it looks like {_describe(head, size)}",
        hint=f"expected one of: {_EXPECTED}",
    )


def _looks_like_onnx(head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, varint 3..15) then another known field."""
    if len(head) < 4 or head[0] != 0x08 or not 3 <= head[1] <= 15:
        return False
    # producer_name 0x12, producer_version 0x1a, domain 0x22, model_version 0x28,
    # doc_string 0x32, graph 0x3a, opset_import 0x42, metadata_props 0x72, functions 0x7a
    return head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A)


def _sniff_zip(path: Path) -> Model:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # ValueError: a name that is not UTF-8
        raise ModelFormatError(
            f"{path}: a damaged or truncated zip archive ({exc})",
            hint="TorchScript archives and .keras files are zip archives; re-export the model",
        ) from exc
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "config.json" in base and any(n.endswith(".weights.h5") for n in names):
        return Model("keras", path)
    if any("/code/" in n for n in names) and "data.pkl" in base:
        return Model("torchscript", path)
    if is_export_archive(names):
        return Model("torch-export", path)
    if "data.pkl" in base:
        return Model("torch-checkpoint", path)  # torch.save: pickled tensors, no program
    raise ModelFormatError(
        f"{path}: a zip archive that is neither a Keras .keras file nor a TorchScript archive "
        f"(it holds {len(names)} entries, e.g. {', '.join(names[:3]) or 'none'})",
        hint=f"expected one of: {_EXPECTED}",
    )


def _sniff_json(path: Path) -> Model:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: text that starts like JSON but does not parse ({exc})") from exc
    if isinstance(doc, dict) and "modelTopology" in doc and "weightsManifest" in doc:
        return Model("tfjs", path)
    keys = ", ".join(list(doc)[:5]) if isinstance(doc, dict) else type(doc).__name__
    raise ModelFormatError(
        f"{path}: a JSON document that is not a TF.js model.json (keys: {keys})",
        hint="a TF.js model.json has 'modelTopology' and 'weightsManifest'",
    )


def _sniff_dir(path: Path) -> Model:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return Model("tf-savedmodel", path)
    if (path / "model.json").is_file():
        return Model(_sniff_json(path / "model.json").format, path)
    if (path / "checkpoint").is_file():
        prefix = _latest_checkpoint(path)
        if prefix is not None:
            model = _checkpoint_from_prefix(prefix)
            if model is not None:
                return Model(model.format, model.path, {**model.extras, "directory": path})
        raise ModelFormatError(
            f"{path}: has a 'checkpoint' file but the checkpoint it names is missing",
            hint="the .index and .data-* files must sit next to the 'checkpoint' file",
        )
    indexes = sorted(path.glob("*.index"))
    if len(indexes) == 1:
        model = _checkpoint_from_prefix(indexes[0].with_suffix(""))
        if model is not None:
            return model
    listing = sorted(p.name for p in path.iterdir())[:8]
    raise ModelFormatError(
        f"{path}: a directory with no model in it (holds: {', '.join(listing) or 'nothing'})",
        hint="a model directory holds saved_model.pb (SavedModel), model.json (TF.js) "
        "or a 'checkpoint' file (TF checkpoint)",
    )


def _latest_checkpoint(directory: Path) -> Path | None:
    """Read the ``model_checkpoint_path`` line of a TF ``checkpoint`` state file."""
    try:
        text = (directory / "checkpoint").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("model_checkpoint_path:"):
            value = line.split(":", 1)[1].strip().strip('"')
            candidate = Path(value)
            return candidate if candidate.is_absolute() else directory / candidate
    return None


def _checkpoint_prefix_of(path: Path) -> Path:
    name = path.name
    if name.endswith(".index"):
        return path.with_name(name[: -len(".index")])
    if ".data-" in name:
        return path.with_name(name.split(".data-", 1)[0])
    return path


def _checkpoint_from_prefix(prefix: Path) -> Model | None:
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        return None
    extras: dict[str, Path] = {"index": index}
    meta = prefix.with_name(prefix.name + ".meta")
    if meta.is_file():
        extras["meta"] = meta
    return Model("tf-checkpoint", prefix, extras)


def _describe(head: bytes, size: int) -> str:
    """A few words on what an unrecognised file seems to be."""
    kinds = {
        b"\x1f\x8b": "gzip-compressed data",
        b"\x93NUMPY": "a NumPy .npy array",
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"\x7fELF": "an executable (ELF)",
        b"%PDF": "a PDF document",
    }
    for magic, what in kinds.items():
        if head.startswith(magic):
            return f"{what} ({size} bytes)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data of {size} bytes that matches no model format"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file of {size} bytes starting with {first!r}"


def open_model(path: str | Path) -> Model:
    """Recognise a model by its content: the one way a path becomes a :class:`Model`."""
    return sniff(Path(path))
