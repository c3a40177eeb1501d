"""Tensors in and out of the wire formats: KServe v2 JSON + binary, TF Serving JSON, TensorProto.

Every decoding problem (a wrong datatype, a shape that does not match the data, ragged
lists, bad base64) becomes an :class:`InputError`, which the protocols answer with 400 /
INVALID_ARGUMENT.
"""
from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.model import Signature, TensorSpec

KSERVE_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
_NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TYPES.items()} | {"string": "BYTES", "bytes_": "BYTES", "str_": "BYTES"}
MAX_ELEMENTS = 1 << 28  # refuse absurd shapes before allocating anything


def kserve_datatype(dtype: str) -> str:
    return _NUMPY_TO_KSERVE.get(dtype, "BYTES" if dtype in ("string", "object") else dtype.upper())


def numpy_dtype(datatype: Any) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in KSERVE_TYPES:
        raise InputError(f"unknown datatype {datatype!r}", hint="datatypes: " + ", ".join(KSERVE_TYPES))
    return np.dtype(KSERVE_TYPES[datatype])


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape):
        raise InputError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > 16 or math.prod(shape) > MAX_ELEMENTS:
        raise InputError(f"{what}: shape {list(shape)} is too large")
    return tuple(shape)


def from_values(values: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    try:
        if dtype == object:
            arr = np.array([v.encode() if isinstance(v, str) else v for v in _flatten(values)], dtype=object)
            if not all(isinstance(v, bytes) for v in arr):
                raise ValueError("BYTES values must be strings")
        else:
            arr = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{what}: data does not fit datatype {datatype} ({exc})") from None
    if arr.size != math.prod(shape):
        raise InputError(f"{what}: shape {list(shape)} needs {math.prod(shape)} values, got {arr.size}")
    return arr.reshape(shape)


def _flatten(values: Any):
    if isinstance(values, list):
        for v in values:
            yield from _flatten(v)
    else:
        yield values


def from_bytes(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A tensor from the binary extension / raw_input_contents (little-endian, row-major)."""
    dtype = numpy_dtype(datatype)
    if dtype == object:
        items, pos, mv = [], 0, memoryview(raw)
        while pos < len(mv):
            if pos + 4 > len(mv):
                raise InputError(f"{what}: truncated BYTES element")
            (n,) = struct.unpack_from("<I", mv, pos)
            if pos + 4 + n > len(mv):
                raise InputError(f"{what}: truncated BYTES element")
            items.append(bytes(mv[pos + 4:pos + 4 + n]))
            pos += 4 + n
        arr = np.array(items, dtype=object)
    else:
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise InputError(f"{what}: shape {list(shape)} of {datatype} needs "
                             f"{math.prod(shape) * dtype.itemsize} bytes, got {len(raw)}")
        arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if arr.size != math.prod(shape):
        raise InputError(f"{what}: shape {list(shape)} needs {math.prod(shape)} values, got {arr.size}")
    return arr.reshape(shape)


def to_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype == object or arr.dtype.kind in "SU":
        out = bytearray()
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            out += struct.pack("<I", len(b)) + b
        return bytes(out)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def to_json_values(arr: np.ndarray) -> list:
    if arr.dtype == object or arr.dtype.kind == "S":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    return arr.reshape(-1).tolist()


# -- TF Serving REST (row "instances" and column "inputs" formats) -------------------------


def _unb64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InputError("a {\"b64\": ...} value is not valid base64") from None
        raise InputError(f"unexpected object {sorted(value)[:5]} where a value was expected "
                         "(only {\"b64\": \"...\"} objects are allowed)")
    if isinstance(value, list):
        return [_unb64(v) for v in value]
    return value


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    value = _unb64(value)
    try:
        if spec.dtype == "string":
            return np.array(value, dtype=object)
        arr = np.array(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input '{spec.name}': values do not form a rectangular array ({exc})") from None
    if arr.dtype == object or arr.dtype.kind in "SU":
        raise InputError(f"input '{spec.name}' takes {spec.dtype} numbers; got strings or binary values")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"input '{spec.name}': values must be numbers")
    try:
        return arr.astype(spec.dtype) if spec.dtype != "unknown" else arr
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"input '{spec.name}': cannot convert to {spec.dtype} ({exc})") from None


def decode_tfs_json(body: Any, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Feeds from a TF Serving predict body; returns (feeds, columnar)."""
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise InputError("give exactly one of 'instances' (row format) or 'inputs' (column format)")
    specs = signature.inputs
    if "inputs" in body:
        data = body["inputs"]
        if isinstance(data, dict):
            return {k: _array(v, _spec_for(signature, k)) for k, v in data.items()}, True
        if len(specs) != 1:
            raise InputError(f"the model has {len(specs)} inputs: 'inputs' must be an object keyed by input name")
        return {specs[0].name: _array(data, specs[0])}, True
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise InputError("'instances' must be a non-empty list")
    if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise InputError("every instance must name the same inputs")
        return {k: _array([r[k] for r in rows], _spec_for(signature, k)) for k in keys}, False
    if len(specs) != 1:
        raise InputError(f"the model has {len(specs)} inputs: each instance must be an object keyed by input name")
    return {specs[0].name: _array(rows, specs[0])}, False


def _spec_for(signature: Signature, name: str) -> TensorSpec:
    spec = signature.input(name) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"unknown input name '{name}'",
                         hint="the model's inputs are: " + ", ".join(s.describe() for s in signature.inputs))
    return spec


def encode_tfs_json(outputs: dict[str, np.ndarray], columnar: bool) -> dict[str, Any]:
    def plain(arr: np.ndarray):
        if arr.dtype == object or arr.dtype.kind == "S":
            return [{"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for v in arr.reshape(-1)]
        return arr.tolist()

    if columnar:
        if len(outputs) == 1:
            return {"outputs": plain(next(iter(outputs.values())))}
        return {"outputs": {k: plain(v) for k, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": plain(next(iter(outputs.values())))}
    n = min(v.shape[0] for v in outputs.values() if v.ndim) if outputs else 0
    return {"predictions": [{k: plain(v[i]) if v.ndim else plain(v) for k, v in outputs.items()} for i in range(n)]}


# -- TensorProto (TF Serving gRPC) ----------------------------------------------------------


def from_tensor_proto(tp, what: str) -> np.ndarray:
    from shipyard.formats.tf_protos import dtype_name, shape_of, tensor_to_numpy

    dtype = dtype_name(tp.dtype)
    shape = shape_of(tp.tensor_shape)
    if shape is None or any(d < 0 for d in shape):
        raise InputError(f"{what}: the tensor needs a fully known shape")
    check_shape(list(shape), what)
    if dtype == "string":
        values = list(tp.string_val)
        if len(values) != math.prod(shape):
            raise InputError(f"{what}: shape {list(shape)} needs {math.prod(shape)} strings, got {len(values)}")
        return np.array(values, dtype=object).reshape(shape)
    try:
        np.dtype(dtype)
    except TypeError:
        raise InputError(f"{what}: dtype {dtype} is not supported") from None
    if tp.tensor_content and len(tp.tensor_content) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise InputError(f"{what}: tensor_content has {len(tp.tensor_content)} bytes, shape {list(shape)} "
                         f"of {dtype} needs {math.prod(shape) * np.dtype(dtype).itemsize}")
    arr = tensor_to_numpy(tp)
    if arr is None:
        raise InputError(f"{what}: dtype {dtype} is not supported")
    return arr


def to_tensor_proto(arr: np.ndarray, tp) -> None:
    """Fill ``tp`` (a TensorProto) from ``arr``: raw little-endian bytes, as TF does."""
    from shipyard.formats.tf_protos import types_enum

    if arr.dtype == object or arr.dtype.kind == "S":
        tp.dtype = types_enum("DT_STRING")
        tp.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1))
    else:
        tp.dtype = types_enum(_TF_NAMES[arr.dtype.name])
        tp.tensor_content = to_bytes(arr)
    for d in arr.shape:
        tp.tensor_shape.dim.add().size = d


_TF_NAMES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "uint8": "DT_UINT8",
             "int16": "DT_INT16", "int8": "DT_INT8", "int64": "DT_INT64", "bool": "DT_BOOL", "uint16": "DT_UINT16",
             "float16": "DT_HALF", "uint32": "DT_UINT32", "uint64": "DT_UINT64"}


def tf_dtype_enum(dtype: str) -> int:
    from shipyard.formats.tf_protos import types_enum

    return types_enum(_TF_NAMES.get(dtype, "DT_STRING" if dtype in ("string", "object") else "DT_INVALID"))
