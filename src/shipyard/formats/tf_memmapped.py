"""TensorFlow's memory-mapped graph format: what TF's ``convert_graphdef_memmapped_format``
tool writes and ``tensorflow::MemmappedEnv`` reads (the mobile/TF1 way to load a frozen graph
whose weights are used in place from an mmap'ed file instead of copied onto the heap).

Layout (tensorflow/core/util/memmapped_file_system.cc and memmapped_file_system_writer.cc)::

    [tensor region][zero pad to 64][tensor region]...[GraphDef region][directory][u64 LE]

* every tensor region starts at a multiple of 64 bytes (``Allocator::kAllocatorAlignment``), so
  the ``ImmutableConst`` node that names it can hand the mapped memory to kernels as it is;
* the GraphDef is the region named ``memmapped_package://.`` (``kMemmappedPackageDefaultGraphDef``);
  its large ``Const`` nodes became ``ImmutableConst`` nodes whose ``memory_region_name`` attribute
  is ``memmapped_package://<sanitised node name>``;
* the directory is a ``MemmappedFileSystemDirectory`` proto (elements: offset 1, name 2,
  length 3; in file order) and the last 8 bytes are its offset, little-endian.

The directory message is declared here from the same field numbers as TF's
``memmapped_file_system.proto`` rather than imported from ``tensorflow.core.util``: the wheel
does ship ``memmapped_file_system_pb2``, but importing it imports all of TensorFlow (~2 s), and
recognising or inspecting a file must not (tests/test_memmapped.py checks both encode the same
bytes). The checks on a file are TF's own reader's, so a file shipyard accepts loads in TF.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import ModelFormatError
from shipyard.formats import tf_protos
from shipyard.model import Model, Signature
from shipyard.summary import Summary

PREFIX = "memmapped_package://"           # MemmappedFileSystem::kMemmappedPackagePrefix
GRAPH_REGION = PREFIX + "."                # MemmappedFileSystem::kMemmappedPackageDefaultGraphDef
ALIGNMENT = 64                             # Allocator::kAllocatorAlignment
SUFFIX = ".mmpb"                           # shipyard's name for these files (TF's tool sets none)
_MAX_DIRECTORY = 64 << 20                  # sniffing never reads more than this


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    length: int


@functools.lru_cache(maxsize=1)
def directory_class():
    """The MemmappedFileSystemDirectory message class (a private descriptor pool: no clash with
    TensorFlow's own registration of ``tensorflow.MemmappedFileSystemDirectory``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(name="shipyard_memmapped_file_system.proto", package="tensorflow",
                                            syntax="proto3")
    element = fd.message_type.add(name="MemmappedFileSystemDirectoryElement")
    u64, string = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64, descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    element.field.add(name="offset", number=1, type=u64, label=optional)
    element.field.add(name="name", number=2, type=string, label=optional)
    element.field.add(name="length", number=3, type=u64, label=optional)
    directory = fd.message_type.add(name="MemmappedFileSystemDirectory")
    directory.field.add(name="element", number=1, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                        type_name=".tensorflow.MemmappedFileSystemDirectoryElement")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.MemmappedFileSystemDirectory"))


def encode_directory(regions: list[Region]) -> bytes:
    msg = directory_class()()
    for r in regions:
        msg.element.add(offset=r.offset, name=r.name, length=r.length)
    return msg.SerializeToString()


def is_well_formed_name(name: str) -> bool:
    """MemmappedFileSystem::IsWellFormedMemmappedPackageFilename: the prefix, then [A-Za-z0-9_.]."""
    rest = name[len(PREFIX):]
    return name.startswith(PREFIX) and all(c.isascii() and (c.isalnum() or c in "_.") for c in rest)


def looks_memmapped(path: Path, tail: bytes, size: int) -> bool:
    """Cheap test for sniffing: the last 8 bytes point at a directory whose first element names a
    ``memmapped_package://`` region (the format has no magic number)."""
    if size <= 8 or len(tail) != 8:
        return False
    offset = int.from_bytes(tail, "little")
    dir_len = size - 8 - offset
    if offset >= size - 8 or dir_len > _MAX_DIRECTORY or dir_len < 2:
        return False
    with path.open("rb") as fh:
        fh.seek(offset)
        head = fh.read(min(dir_len, 64 + len(PREFIX)))
    return head[:1] == b"\x0a" and PREFIX.encode() in head


def parse_directory(path: Path | str, data: bytes) -> list[Region]:
    """The regions of a memmapped file in ``data``, checked as TF's MemmappedFileSystem checks
    them (plus: every region lies inside the file), each failure a one-line ModelFormatError."""
    from google.protobuf.message import DecodeError

    where = f"{path}: not a valid TensorFlow memmapped graph"
    if len(data) <= 8:
        raise ModelFormatError(f"{where}: {len(data)} bytes, too short for the directory offset")
    offset = int.from_bytes(data[-8:], "little")
    if offset > len(data) - 8:
        raise ModelFormatError(f"{where}: the directory offset {offset} lies past the end of the file "
                               f"({len(data)} bytes); the file is truncated or corrupt")
    msg = directory_class()()
    try:
        msg.ParseFromString(data[offset:-8])
    except DecodeError as exc:
        raise ModelFormatError(f"{where}: its directory does not parse ({exc}); the file is truncated or corrupt") from exc
    regions = [Region(e.name, e.offset, e.length) for e in msg.element]
    if not regions:
        raise ModelFormatError(f"{where}: its directory is empty; the file is truncated or corrupt")
    names: set[str] = set()
    previous = offset
    for r in reversed(regions):  # TF walks the directory backwards: offsets strictly increase
        if r.offset >= previous or r.offset + r.length > offset:
            raise ModelFormatError(f"{where}: region '{r.name}' (offset {r.offset}, {r.length} bytes) lies outside "
                                   "the data before the directory; the file is truncated or corrupt")
        if r.name in names:
            raise ModelFormatError(f"{where}: the directory names region '{r.name}' twice")
        names.add(r.name)
        previous = r.offset
    if GRAPH_REGION not in names:
        raise ModelFormatError(f"{where}: no graph region '{GRAPH_REGION}' in its directory",
                               hint="this memmapped file holds no default GraphDef")
    return regions


@dataclass
class MemmappedGraph:
    """A parsed file: the stored GraphDef (with ImmutableConst nodes), its regions and bytes."""

    graph_def: object
    regions: list[Region]
    data: bytes

    def region_bytes(self, name: str) -> bytes:
        r = next((r for r in self.regions if r.name == name), None)
        if r is None:
            raise KeyError(name)
        return self.data[r.offset:r.offset + r.length]

    def tensor_regions(self) -> list[Region]:
        return [r for r in self.regions if r.name != GRAPH_REGION]


def load(model: Model) -> MemmappedGraph:
    from google.protobuf.message import DecodeError

    data = model.read_bytes()
    regions = parse_directory(model.path, data)
    graph = tf_protos.GraphDef()
    raw = next(data[r.offset:r.offset + r.length] for r in regions if r.name == GRAPH_REGION)
    try:
        graph.ParseFromString(raw)
    except (DecodeError, RuntimeError) as exc:  # RuntimeError: some protobuf backends on deep nesting
        raise ModelFormatError(f"{model.path}: the graph region of this memmapped file does not parse as a "
                               f"GraphDef ({exc}); the file is truncated or corrupt") from exc
    parsed = MemmappedGraph(graph, regions, data)
    _check_immutable_consts(model.path, parsed)
    return parsed


def _check_immutable_consts(path: Path, parsed: MemmappedGraph) -> None:
    known = {r.name: r for r in parsed.regions}
    for node in parsed.graph_def.node:
        if node.op != "ImmutableConst":
            continue
        name = node.attr["memory_region_name"].s.decode("utf-8", "replace")
        region = known.get(name)
        if region is None:
            raise ModelFormatError(f"{path}: node '{node.name}' reads region '{name}', which the file does not hold")
        dtype = tf_protos.dtype_name(node.attr["dtype"].type)
        shape = tf_protos.shape_of(node.attr["shape"].shape) or ()
        want = _numel(shape) * tf_protos.itemsize(dtype)
        if region.length != want:
            raise ModelFormatError(f"{path}: region '{name}' holds {region.length} bytes but node '{node.name}' "
                                   f"needs {want} ({dtype}{list(shape)}); the file is corrupt")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def frozen_graph_def(parsed: MemmappedGraph):
    """The ordinary frozen GraphDef the file stands for: each ImmutableConst back to a Const whose
    tensor_content is its region's bytes (how shipyard runs the file from Python: TF's Python API
    has no MemmappedEnv)."""
    graph = tf_protos.GraphDef()
    graph.CopyFrom(parsed.graph_def)
    for node in graph.node:
        if node.op != "ImmutableConst":
            continue
        dtype, shape = node.attr["dtype"].type, node.attr["shape"].shape
        content = parsed.region_bytes(node.attr["memory_region_name"].s.decode())
        node.op = "Const"
        node.attr.clear()
        node.attr["dtype"].type = dtype
        tensor = node.attr["value"].tensor
        tensor.dtype = dtype
        tensor.tensor_shape.CopyFrom(shape)
        tensor.tensor_content = content
    return graph


def signature(model: Model) -> Signature:
    from shipyard.formats import tf_graph

    return tf_graph.signature_of(frozen_graph_def(load(model)))


def summarize(model: Model) -> Summary:
    """As for a frozen GraphDef (inputs, outputs, FLOPs, weights), with the ops as stored
    (ImmutableConst) and the regions' layout in ``details``."""
    from shipyard.formats import tf_graph
    from shipyard.summary import histogram

    parsed = load(model)
    summary = tf_graph.summarize_graph_def(frozen_graph_def(parsed), None, model.path, "tf-memmapped", len(parsed.data))
    summary.ops = histogram(n.op for n in parsed.graph_def.node)
    tensors = parsed.tensor_regions()
    summary.details.update({
        "memmapped_regions": len(tensors),
        "memmapped_bytes": sum(r.length for r in tensors),
        "graph_region_bytes": next(r.length for r in parsed.regions if r.name == GRAPH_REGION),
    })
    return summary


def graph_def(model: Model):
    """The GraphDef (with its function library) that op tools read (``formats.registry``: ``graph``)."""
    return frozen_graph_def(load(model))
