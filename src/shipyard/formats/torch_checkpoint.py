"""PyTorch checkpoints as they are really saved: a ``state_dict`` or a whole training checkpoint
(``torch.save``: ``.pth``, ``.pt``, ``.bin``) and ``.safetensors`` files. Weights, no program.

``torch.save`` files are pickles. They are loaded with ``torch.load(weights_only=True)``, whose
unpickler builds tensors and plain containers and refuses everything else, so a file that
would run code when unpickled is refused before any of it runs. Tensors are mapped to the CPU,
and the device each storage was saved on is recorded on the way (``map_location`` as a
function receives it). ``.safetensors`` headers are JSON and are read without torch.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache

from shipyard.errors import ModelFormatError, ModelLoadError, UnsupportedError
from shipyard.model import Model, Signature
from shipyard.summary import Summary, add_param

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
# torch.save's legacy (non-zip) format: pickle protocol 2, then the magic number 0x1950a86a20f9469cfc6c
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_SAFE_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
                "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
                "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
                "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8)}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    nbytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "device": self.device,
                "numel": self.numel, "bytes": self.nbytes}


def is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then a JSON object that fits in the file."""
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= min(size - 8, SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def _safetensors(model: Model) -> tuple[list[TensorEntry], dict]:
    data = model.in_memory()
    size = len(data) if data is not None else model.path.stat().st_size
    with model.path.open("rb") if data is None else contextlib.nullcontext(io.BytesIO(data)) as fh:
        (length,) = struct.unpack("<Q", fh.read(8).ljust(8, b"\0"))
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise ModelFormatError(f"{model.path}: safetensors header claims {length} bytes, the file has {size}")
        try:
            header = json.loads(fh.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{model.path}: the safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{model.path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    entries = []
    for name, info in header.items():
        try:
            dtype, width = _SAFE_DTYPES.get(info["dtype"], (info["dtype"].lower(), 0))
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFormatError(f"{model.path}: tensor '{name}' has a malformed safetensors entry") from exc
        numel = 1
        for d in shape:
            numel *= d
        if end < start or 8 + length + end > size:
            raise ModelFormatError(f"{model.path}: tensor '{name}' lies outside the file (truncated?)")
        entries.append(TensorEntry(name, shape, dtype, "(not recorded)", numel, end - start if not width else numel * width))
    return entries, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def _torch_load(model: Model):
    """(loaded object, {storage data_ptr: saved device})."""
    from shipyard.deps import require

    torch = require("torch", "Reading a PyTorch checkpoint")
    devices: dict[int, str] = {}

    def to_cpu(storage, location):
        devices[storage.data_ptr()] = location
        return storage

    data = model.in_memory()
    source = io.BytesIO(data) if data is not None else str(model.path)
    try:
        obj = torch.load(source, map_location=to_cpu, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise ModelLoadError(
            f"{model.path}: refused: the pickle holds more than tensors and containers ({detail[:200]}); "
            "shipyard loads checkpoints with weights_only=True and never runs code from a pickle",
            hint="if you trust the file, load it yourself and save model.state_dict() with torch.save",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{model.path}: torch.load failed ({detail}); truncated or not a torch.save file?") from exc
    return obj, devices


def _walk(obj, prefix: str, out: list, others: dict, depth: int = 0) -> None:
    """Every tensor in nested dicts/lists/tuples, named by its dotted path."""
    import torch

    if isinstance(obj, torch.Tensor):
        out.append((prefix or "tensor", obj))
    elif isinstance(obj, dict) and depth < 16:
        for key, value in obj.items():
            _walk(value, f"{prefix}.{key}" if prefix else str(key), out, others, depth + 1)
    elif isinstance(obj, (list, tuple)) and depth < 16:
        for i, value in enumerate(obj):
            _walk(value, f"{prefix}.{i}" if prefix else str(i), out, others, depth + 1)
    elif prefix:
        others[prefix] = repr(obj)[:60]


@lru_cache(maxsize=4)
def tensors(model: Model) -> tuple[list[TensorEntry], dict[str, str], str]:
    """(tensors, non-tensor entries or metadata, container kind) of a checkpoint."""
    if model.path.suffix == ".safetensors" or _head_is_safetensors(model):
        entries, metadata = _safetensors(model)
        return entries, metadata, "safetensors"
    obj, devices = _torch_load(model)
    found: list = []
    others: dict[str, str] = {}
    _walk(obj, "", found, others)
    entries = []
    for name, t in found:
        try:
            device = devices.get(t.untyped_storage().data_ptr(), "cpu")
        except RuntimeError:
            device = "cpu"
        entries.append(TensorEntry(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), device,
                                   t.numel(), t.numel() * t.element_size()))
    kind = "state_dict" if isinstance(obj, dict) and not others and all("." in n or n for n, _ in found) else "checkpoint"
    return entries, others, kind


def _head_is_safetensors(model: Model) -> bool:
    data = model.in_memory()
    if data is None:
        with model.path.open("rb") as fh:
            data = fh.read(16)
        return is_safetensors(data, model.path.stat().st_size)
    return is_safetensors(data[:16], len(data))


STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def state_dict_of(model: Model) -> dict:
    """The tensors to load into a module: the file's own dict of tensors, or the one a training
    checkpoint keeps under a usual key ('state_dict', 'model', ...)."""
    import torch

    if tensors(model)[2] == "safetensors":
        from shipyard.deps import require

        return require("safetensors.torch", "Loading .safetensors weights").load_file(str(model.path))
    obj, _ = _torch_load(model)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in STATE_KEYS:
        inner = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    raise ModelFormatError(f"{model.path}: holds no state_dict (a dict of tensors, at the top or under "
                           f"{', '.join(repr(k) for k in STATE_KEYS)})")


def signature(model: Model) -> Signature:
    raise UnsupportedError(
        f"{model.path}: a checkpoint holds weights, not a program: it has no inputs or outputs to run",
        hint="'shipyard inspect' lists its tensors; to run or convert it, load it into its nn.Module and export "
             "(torch.jit.trace, or 'shipyard convert package.module:factory')",
    )


def summarize(model: Model) -> Summary:
    entries, others, kind = tensors(model)
    param_bytes: dict[str, int] = {}
    for e in entries:
        add_param(param_bytes, e.dtype, e.nbytes)
    devices = sorted({e.device for e in entries})
    details = {
        "tensors": [e.to_json() for e in entries],
        "flops_unavailable": "weights only, no program to count FLOPs from",
        "saved_on": ", ".join(devices),
    }
    if others and kind != "safetensors":
        details["other_entries"] = others
    return Summary(
        format="torch-checkpoint",
        path=str(model.path),
        size_bytes=model.path.stat().st_size,
        inputs=[], outputs=[], ops={},
        params=sum(e.numel for e in entries),
        param_bytes=param_bytes,
        producer="safetensors" if kind == "safetensors" else "torch.save",
        version=f"{kind}, {len(entries)} tensors",
        metadata=others if kind == "safetensors" else {},
        details=details,
    )
