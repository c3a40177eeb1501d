"""Regenerate src/shipyard/serve/protos/*_pb2.py from the .proto files next to them.

Needs grpcio-tools (a build-time tool only). TensorBoard's TF framework protos are not shipped
as .proto sources, so their descriptors are taken from the installed modules and handed to
protoc as a descriptor set.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

SRC = Path(__file__).resolve().parents[1] / "src"
PROTOS = SRC / "shipyard" / "serve" / "protos"


def _descriptor_set() -> bytes:
    from tensorboard.compat.proto import meta_graph_pb2, tensor_pb2

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(fd) -> None:
        if fd.name in files:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = proto

    add(tensor_pb2.DESCRIPTOR)
    add(meta_graph_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString()


def main() -> int:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "deps.pb"
        ds.write_bytes(_descriptor_set())
        for proto in sorted(PROTOS.glob("*.proto")):
            # Compiled relative to src/ so the descriptor's file name is unique in the pool.
            args = ["protoc", f"-I{SRC}", f"-I{well_known}", f"--descriptor_set_in={ds}",
                    f"--python_out={SRC}", str(proto.relative_to(SRC))]
            if protoc.main(args) != 0:
                print(f"protoc failed on {proto}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
