"""TensorFlow protobuf messages without importing TensorFlow.

TensorBoard ships TF's framework protos compiled under its own ``tensorboard`` package
(same field numbers, so the wire format is identical), which lets shipyard parse GraphDef,
MetaGraphDef and SavedModel files in milliseconds instead of paying TF's 2 s import.
SavedModel's own two-field wrapper message is not among them; it is decoded here by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import graph_pb2, meta_graph_pb2, tensor_pb2  # noqa: F401

from shipyard.errors import ModelFormatError

GraphDef = graph_pb2.GraphDef
MetaGraphDef = meta_graph_pb2.MetaGraphDef

# DataType enum (tensorflow/core/framework/types.proto) -> numpy dtype name.
DTYPES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
_ITEMSIZE = {"qint8": 1, "quint8": 1, "qint16": 2, "quint16": 2, "qint32": 4, "bfloat16": 2,
             "string": 0, "resource": 0, "variant": 0}


def dtype_name(enum: int) -> str:
    """Numpy-style name of a TF DataType (reference types ``+100`` map to their base type)."""
    if enum > 100:
        enum -= 100
    return DTYPES.get(enum, f"dt{enum}")


def itemsize(dtype: str) -> int:
    return _ITEMSIZE[dtype] if dtype in _ITEMSIZE else np.dtype(dtype).itemsize


def shape_of(shape_proto) -> tuple[int, ...] | None:
    """TensorShapeProto -> tuple with -1 for unknown dims, None for unknown rank."""
    if shape_proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in shape_proto.dim)


def tensor_to_numpy(tensor) -> np.ndarray | None:
    """Values of a (small) TensorProto; None for dtypes numpy cannot hold."""
    dtype = dtype_name(tensor.dtype)
    shape = shape_of(tensor.tensor_shape) or ()
    if dtype in ("string", "resource", "variant") or dtype.startswith(("q", "b")):
        return None
    np_dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=np_dtype).reshape(shape)
    field = {
        "float32": tensor.float_val, "float64": tensor.double_val, "int32": tensor.int_val,
        "int16": tensor.int_val, "int8": tensor.int_val, "uint8": tensor.int_val,
        "uint16": tensor.int_val, "int64": tensor.int64_val, "bool": tensor.bool_val,
        "float16": tensor.half_val, "uint32": tensor.uint32_val, "uint64": tensor.uint64_val,
    }.get(dtype)
    if field is None:
        return None
    values = np.array(list(field), dtype=np_dtype if dtype != "float16" else np.uint16)
    if dtype == "float16":
        values = values.view(np.float16)
    if values.size == count:
        return values.reshape(shape)
    if values.size >= 1:  # TF repeats the last value to fill the tensor
        return np.concatenate([values, np.full(count - values.size, values[-1], values.dtype)]).reshape(shape)
    return np.zeros(shape, dtype=np_dtype)


def parse_graph_file(path: Path, data: bytes | None = None) -> tuple[GraphDef, MetaGraphDef | None]:
    """Parse a binary or text GraphDef or MetaGraphDef (from ``data`` when given, e.g. decrypted
    in memory); returns (graph, meta or None)."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"{path}: cannot be read ({exc.strerror})") from exc
    if looks_like_text_proto(data[:512]):
        return _parse_text(path, data)
    meta = MetaGraphDef()
    try:
        meta.ParseFromString(data)
        if meta.graph_def.node and (meta.HasField("meta_info_def") or meta.HasField("saver_def") or meta.signature_def):
            return meta.graph_def, meta
    except DecodeError:
        pass
    graph = GraphDef()
    try:
        graph.ParseFromString(data)
    except DecodeError as exc:
        raise ModelFormatError(
            f"{path}: truncated or corrupt TensorFlow GraphDef (the protobuf does not parse: {exc})",
            hint="re-export the graph; if it was copied, compare its size with the original",
        ) from exc
    _check_nodes(path, graph)
    return graph, None


def _parse_text(path: Path, data: bytes) -> tuple[GraphDef, MetaGraphDef | None]:
    text = data.decode("utf-8", errors="replace")
    is_meta = text.lstrip().startswith(("meta_info_def", "graph_def"))
    msg = MetaGraphDef() if is_meta else GraphDef()
    try:
        text_format.Parse(text, msg, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelFormatError(f"{path}: a text GraphDef (.pbtxt) that does not parse: {exc}") from exc
    if is_meta:
        _check_nodes(path, msg.graph_def)
        return msg.graph_def, msg
    _check_nodes(path, msg)
    return msg, None


def _check_nodes(path: Path, graph: GraphDef) -> None:
    if not graph.node and not graph.library.function:
        raise ModelFormatError(f"{path}: a TensorFlow graph with no nodes (truncated or empty)")
    for node in graph.node[:50]:
        if not node.op:
            raise ModelFormatError(
                f"{path}: not a valid TensorFlow GraphDef (node '{node.name[:40]}' has no op type)",
                hint="the file may be truncated, or another protobuf message altogether",
            )


def parse_saved_model(path: Path, data: bytes | None = None) -> list[MetaGraphDef]:
    """Decode ``saved_model.pb``: field 1 is the schema version, field 2 repeats MetaGraphDef."""
    pb = path / "saved_model.pb"
    if data is None:
        if not pb.is_file():
            raise ModelFormatError(f"{path}: only binary saved_model.pb is supported (found saved_model.pbtxt)")
        data = pb.read_bytes()
    metas = []
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                length, pos = _varint(data, pos)
                if pos + length > len(data):
                    raise DecodeError("length past end of file")
                if field == 2:
                    metas.append(MetaGraphDef.FromString(data[pos : pos + length]))
                pos += length
            else:
                raise DecodeError(f"unexpected wire type {wire}")
    except (DecodeError, IndexError) as exc:
        raise ModelFormatError(f"{pb}: truncated or corrupt saved_model.pb ({exc})") from exc
    if not metas:
        raise ModelFormatError(f"{pb}: a SavedModel with no MetaGraph")
    return metas


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def types_enum(name: str) -> int:
    """DataType enum value of a name such as ``"DT_FLOAT"``."""
    from tensorboard.compat.proto import types_pb2

    return types_pb2.DataType.Value(name)


def looks_like_text_proto(head: bytes) -> bool:
    """A text-format GraphDef/MetaGraphDef starts (after comments) with ``field {``."""
    if head[:1] in (b"\x0a", b"\x08") or b"\x00" in head:
        return False
    for raw in head.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        first = line.replace(b" ", b"")
        return first.startswith((b"node{", b"library{", b"versions{", b"meta_info_def{", b"graph_def{"))
    return False
