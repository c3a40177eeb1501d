"""Tensors in and out of the wire formats: KServe v2 JSON + binary, TF Serving JSON, TensorProto.

Every decoding problem (a wrong datatype, a shape that does not match the data, ragged
lists, bad base64) becomes an :class:`InputError`, which the protocols answer with 400 /
INVALID_ARGUMENT.

Sizes come first: a request declares shapes (KServe ``shape``, a TensorProto's
``tensor_shape``) that can be far larger than the data it carries (TF fills a tensor with its
last value; 36 bytes can declare 2 GB). Every declared shape goes through :class:`Limits`
(the model's input names, ranks and fixed dimensions, and ``--max-request-mb`` for the
decoded tensors) before a single element is allocated.
"""
from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.model import Signature, TensorSpec, tensor_name
from shipyard.serve.errors import TooLargeError

KSERVE_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
_NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TYPES.items()} | {"string": "BYTES", "bytes_": "BYTES", "str_": "BYTES"}
MAX_ELEMENTS = 1 << 28  # refuse absurd shapes before allocating anything


def kserve_datatype(dtype: str) -> str:
    return _NUMPY_TO_KSERVE.get(dtype, "BYTES" if dtype in ("string", "object") else dtype.upper())


_KSERVE_OF_DTYPE: dict[np.dtype, str] = {}


def kserve_datatype_of(dtype: np.dtype) -> str:
    """:func:`kserve_datatype` of an array's dtype, remembered per dtype: numpy computes
    ``dtype.name`` in Python on every access (a sixth of encoding a tiny model's answer)."""
    kind = _KSERVE_OF_DTYPE.get(dtype)
    if kind is None:
        kind = _KSERVE_OF_DTYPE[dtype] = kserve_datatype(dtype.name)  # bounded: the dtypes models output
    return kind


_NUMPY_DTYPES = {k: np.dtype(v) for k, v in KSERVE_TYPES.items()}


def numpy_dtype(datatype: Any) -> np.dtype:
    dtype = _NUMPY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InputError(f"unknown datatype {datatype!r}", hint="datatypes: " + ", ".join(KSERVE_TYPES))
    return dtype


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    ok = isinstance(shape, (list, tuple))
    if ok:
        for d in shape:  # a loop, not all(<generator>): half the time on every request
            if not (type(d) is int or (isinstance(d, int) and not isinstance(d, bool))) or d < 0:
                ok = False
                break
    if not ok:
        raise InputError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > 16 or math.prod(shape) > MAX_ELEMENTS:
        raise InputError(f"{what}: shape {list(shape)} is too large")
    return tuple(shape)


def input_names(signature: Signature) -> dict[str, TensorSpec]:
    """{name: input} for every name ``signature.resolve_input`` resolves by an exact match (each
    input's name, and the same without ``:0``), worked out once per loaded model: a request's
    inputs are looked up in it before resolving (a converter's prefix) as ``resolve_input`` does."""
    table: dict[str, TensorSpec] = {}
    for spec in signature.inputs:
        for key in (spec.name, tensor_name(spec.name)):
            if key not in table and signature.resolve_input(key) is spec:
                table[key] = spec
    return table


class Limits:
    """What one request may declare, checked from the declared shape before anything is allocated:
    input names the model has, its ranks and fixed dimensions, and at most ``max_bytes`` of tensor
    data over all inputs (elements x item size; one byte per BYTES/string element)."""

    def __init__(self, signature: Signature | None = None, max_bytes: int | None = None,
                 by_name: dict[str, TensorSpec] | None = None):
        self.signature = signature
        self.max_bytes = max_bytes
        self.used = 0
        self.by_name = by_name or {}  # names that resolve to an input at once (see input_names)

    def admit(self, name: Any, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
        if self.signature is not None:
            spec = self.by_name.get(name) if type(name) is str else None
            if spec is None:
                spec = self.signature.resolve_input(name) if isinstance(name, str) else None
            if spec is None:
                raise InputError(f"unknown input name '{name}'",
                                 hint="the model's inputs are: " + ", ".join(s.describe() for s in self.signature.inputs))
            if spec.shape is not None:
                if len(shape) != len(spec.shape):
                    raise InputError(f"{what}: expected rank {len(spec.shape)} (shape {list(spec.shape)}), "
                                     f"got rank {len(shape)} (shape {list(shape)})")
                for axis, (want, got) in enumerate(zip(spec.shape, shape)):
                    if isinstance(want, int) and want >= 0 and want != got:
                        raise InputError(f"{what}: dimension {axis} must be {want}, got {got} "
                                         f"(expected shape {list(spec.shape)}, given {list(shape)})")
        self.used += math.prod(shape) * (1 if dtype.kind == "O" else dtype.itemsize)
        if self.max_bytes is not None and self.used > self.max_bytes:
            raise TooLargeError(f"{what}: the request's tensors take {self.used} bytes, above the limit of "
                                f"{self.max_bytes} bytes", hint="raise --max-request-mb, or send smaller batches")


def from_values(values: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A tensor from JSON ``data`` (nested or flat lists)."""
    dtype = numpy_dtype(datatype)
    try:
        if dtype.kind == "O":
            arr = np.array([v.encode() if isinstance(v, str) else v for v in _flatten(values)], dtype=object)
            if not all(isinstance(v, bytes) for v in arr):
                raise ValueError("BYTES values must be strings")
        else:
            arr = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InputError(f"{what}: data does not fit datatype {datatype} ({exc})") from None
    if arr.size != math.prod(shape):
        raise InputError(f"{what}: shape {list(shape)} needs {math.prod(shape)} values, got {arr.size}")
    return arr.reshape(shape)


def from_repeated(values, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A tensor from a protobuf repeated field (KServe gRPC typed contents): the count is
    checked before converting, and numbers convert without a Python list in between."""
    dtype = numpy_dtype(datatype)
    count = math.prod(shape)
    if len(values) != count:
        raise InputError(f"{what}: shape {list(shape)} needs {count} values, got {len(values)}")
    try:
        if dtype == object:
            arr = np.array(list(values), dtype=object)
        else:
            arr = np.fromiter(values, dtype=dtype, count=count)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{what}: data does not fit datatype {datatype} ({exc})") from None
    return arr.reshape(shape)


def _flatten(values: Any):
    stack = [iter([values])]  # iterative: nesting depth is the client's choice
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            yield v
        else:
            stack.pop()


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


def _array(value: Any, spec: TensorSpec, limits: Limits) -> np.ndarray:
    what = f"input '{spec.name}'"
    try:
        value = _unb64(value)
        if spec.dtype == "string":
            arr = np.array(value, dtype=object)
            limits.admit(spec.name, arr.shape, arr.dtype, what)
            return arr
        arr = np.array(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InputError(f"{what}: values do not form a rectangular array ({exc})") from None
    if arr.dtype == object or arr.dtype.kind in "SU":
        raise InputError(f"input '{spec.name}' takes {spec.dtype} numbers; got strings or binary values")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"input '{spec.name}': values must be numbers")
    # JSON carries its values (no declared shape to amplify): check what it holds before converting
    try:
        target = np.dtype(spec.dtype)
    except TypeError:  # "unknown", or a type numpy lacks: the engine checks it
        target = arr.dtype
    limits.admit(spec.name, arr.shape, target, what)
    try:
        return arr.astype(spec.dtype) if spec.dtype != "unknown" else arr
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"input '{spec.name}': cannot convert to {spec.dtype} ({exc})") from None


def decode_tfs_json(body: Any, signature: Signature, max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Feeds from a TF Serving predict body; returns (feeds, columnar)."""
    limits = Limits(signature, max_bytes)
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise InputError("give exactly one of 'instances' (row format) or 'inputs' (column format)")
    specs = signature.inputs
    if "inputs" in body:
        data = body["inputs"]
        if isinstance(data, dict):
            return {k: _array(v, _spec_for(signature, k), limits) for k, v in data.items()}, True
        if len(specs) != 1:
            raise InputError(f"the model has {len(specs)} inputs: 'inputs' must be an object keyed by input name")
        return {specs[0].name: _array(data, specs[0], limits)}, True
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise InputError("'instances' must be a non-empty list")
    if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise InputError("every instance must name the same inputs")
        return {k: _array([r[k] for r in rows], _spec_for(signature, k), limits) for k in keys}, False
    if len(specs) != 1:
        raise InputError(f"the model has {len(specs)} inputs: each instance must be an object keyed by input name")
    return {specs[0].name: _array(rows, specs[0], limits)}, False


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


# TensorProto value fields by numpy dtype (half_val holds float16 bit patterns)
_TP_FIELDS = {"float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val",
              "int8": "int_val", "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "bool": "bool_val",
              "float16": "half_val", "uint32": "uint32_val", "uint64": "uint64_val"}


def from_tensor_proto(tp, what: str, limits: Limits | None = None, name: str | None = None) -> np.ndarray:
    """A tensor from a TensorProto (TF Serving gRPC). Its declared shape is admitted by
    ``limits`` first; fewer values than the shape holds are filled with the last one (TF's
    rule), more are an error."""
    from shipyard.formats.tf_protos import dtype_name, shape_of

    dtype = dtype_name(tp.dtype)
    shape = shape_of(tp.tensor_shape)
    if shape is None or any(d < 0 for d in shape):
        raise InputError(f"{what}: the tensor needs a fully known shape")
    shape = check_shape(list(shape), what)
    count = math.prod(shape)
    if dtype != "string" and dtype not in _TP_FIELDS:
        raise InputError(f"{what}: dtype {dtype} is not supported")
    np_dtype = np.dtype(object if dtype == "string" else dtype)
    if limits is not None:
        limits.admit(name, shape, np_dtype, what)
    if dtype == "string":
        values = tp.string_val
        if len(values) != count:
            raise InputError(f"{what}: shape {list(shape)} needs {count} strings, got {len(values)}")
        return np.array(list(values), dtype=object).reshape(shape)
    if tp.tensor_content:
        if len(tp.tensor_content) != count * np_dtype.itemsize:
            raise InputError(f"{what}: tensor_content has {len(tp.tensor_content)} bytes, shape {list(shape)} "
                             f"of {dtype} needs {count * np_dtype.itemsize}")
        return np.frombuffer(tp.tensor_content, dtype=np_dtype.newbyteorder("<")).reshape(shape)
    field = getattr(tp, _TP_FIELDS[dtype])
    given = len(field)
    if given > count:
        raise InputError(f"{what}: shape {list(shape)} holds {count} values, got {given}")
    wire = np.dtype(np.uint16) if dtype == "float16" else np_dtype
    out = np.zeros(count, dtype=wire)
    if given:
        try:
            out[:given] = np.fromiter(field, dtype=wire, count=given)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(f"{what}: values do not fit dtype {dtype} ({exc})") from None
        out[given:] = out[given - 1]
    return (out.view(np.float16) if dtype == "float16" else out).reshape(shape)


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
