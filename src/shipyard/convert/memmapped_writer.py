"""Write TensorFlow's memory-mapped graph format from a frozen GraphDef.

A port of TF's ``convert_graphdef_memmapped_format`` (tensorflow/contrib/util/
convert_graphdef_memmapped_format_lib.cc) and ``MemmappedFileSystemWriter``: that tool is a Bazel
C++ binary that no wheel ships, and TF's Python API has no writer for the format, so shipyard
writes the bytes itself, byte for byte the layout the C++ writer produces (see
``shipyard.formats.tf_memmapped`` for the layout; tests/test_memmapped.py loads the result with
the wheel's own ``tensorflow::MemmappedEnv``).

What the tool does, and this does too: every ``Const`` of a plain-old-data dtype whose tensor
is at least ``min_bytes`` long (the tool's ``--min_conversion_tensor_size``, 10000 by default)
is written as a 64-byte aligned region and the node becomes an ``ImmutableConst`` with only the
``dtype``, ``shape`` and ``memory_region_name`` attributes; smaller, string and quantized
constants stay in the graph.
"""
from __future__ import annotations

import numpy as np

from shipyard.errors import ConversionError
from shipyard.formats import tf_protos
from shipyard.formats.tf_memmapped import ALIGNMENT, GRAPH_REGION, PREFIX, Region, encode_directory, is_well_formed_name

MIN_BYTES = 10000  # convert_graphdef_memmapped_format's --min_conversion_tensor_size default (bytes)

# TF_CALL_POD_TYPES (number types and bool): the dtypes the tool memory-maps, with their item size.
POD_ITEMSIZE = {
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "complex64": 8, "complex128": 16,
    "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1,
}


def tensor_bytes(node) -> bytes | None:
    """The tensor of a Const node as TF's ``Tensor::tensor_data()`` holds it (what the region
    stores); None for a dtype the tool leaves alone."""
    tensor = node.attr["value"].tensor
    dtype = tf_protos.dtype_name(tensor.dtype)
    size = POD_ITEMSIZE.get(dtype)
    if size is None:
        return None
    shape = tf_protos.shape_of(tensor.tensor_shape) or ()
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * size:
            raise ConversionError(f"Const '{node.name}': {len(tensor.tensor_content)} bytes of tensor_content for "
                                  f"{dtype}{list(shape)} ({count * size} expected); the graph is corrupt")
        return bytes(tensor.tensor_content)
    if count == 0:
        return b""
    values = _typed_values(tensor, dtype)
    if values.size == 0:
        return np.zeros(count * size, np.uint8).tobytes()
    if values.size < count:  # Tensor::FromProto repeats the last value
        values = np.concatenate([values, np.repeat(values[-1:], count - values.size)])
    return values[:count].tobytes()


def _typed_values(tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return np.array(list(tensor.half_val), np.uint16)  # bfloat16 bits in half_val
    if dtype == "bool":
        return np.array(list(tensor.bool_val), np.bool_)
    if dtype == "complex64":
        return np.array(list(tensor.scomplex_val), np.float32).view(np.complex64)
    if dtype == "complex128":
        return np.array(list(tensor.dcomplex_val), np.float64).view(np.complex128)
    values = tf_protos.tensor_to_numpy(tensor)
    return np.asarray(values).ravel() if values is not None else np.zeros(0, np.dtype(dtype))


def region_name(node_name: str, used: set[str]) -> str:
    """NodeConverter::ConvertVariableNameToUniqueRegionName: characters outside [A-Za-z0-9_.]
    become '_', and '_' is appended until the name is unused."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in node_name)
    while name in used:
        name += "_"
    used.add(name)
    return name


def memmapped_bytes(graph_def, min_bytes: int = MIN_BYTES) -> tuple[bytes, int]:
    """(the file's bytes, number of converted Const nodes) for a frozen GraphDef (not modified)."""
    graph = type(graph_def)()
    graph.CopyFrom(graph_def)
    min_bytes = max(int(min_bytes), 1)  # the writer refuses empty regions ("saving tensor with 0 size")
    chunks: list[bytes] = []
    regions: list[Region] = []
    offset, used = 0, set()
    for node in graph.node:
        if node.op != "Const":
            continue
        data = tensor_bytes(node)
        if data is None or len(data) < min_bytes:
            continue
        pad = -offset % ALIGNMENT  # MemmappedFileSystemWriter::AdjustAlignment
        chunks.append(b"\0" * pad)
        offset += pad
        name = PREFIX + region_name(node.name, used)
        assert is_well_formed_name(name), name
        regions.append(Region(name, offset, len(data)))
        chunks.append(data)
        offset += len(data)
        tensor = node.attr["value"].tensor
        dtype, shape = tensor.dtype, type(tensor.tensor_shape)()
        shape.CopyFrom(tensor.tensor_shape)
        node.op = "ImmutableConst"
        node.attr.clear()  # only what ImmutableConstantOp understands
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(shape)
        node.attr["memory_region_name"].s = name.encode()
    encoded = graph.SerializeToString()  # SaveProtobuf: no alignment before the graph
    regions.append(Region(GRAPH_REGION, offset, len(encoded)))
    chunks.append(encoded)
    offset += len(encoded)
    chunks.append(encode_directory(regions))
    chunks.append(offset.to_bytes(8, "little"))  # FlushAndClose: the directory's offset, little-endian
    return b"".join(chunks), len(regions) - 1
