"""``tf.train.Example`` messages without TensorFlow.

The message is tiny and its wire format is fixed (example.proto / feature.proto), but no
package short of TensorFlow ships it compiled; it is declared here in a private descriptor
pool under its own package name, so it never clashes with TensorFlow's ``tensorflow.Example``
when both are loaded, and the bytes are identical on the wire.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


@lru_cache(maxsize=1)
def _classes():
    fd = descriptor_pb2.FileDescriptorProto(name="shipyard/tf_example.proto", package="shipyard.tfexample", syntax="proto3")

    def message(name, fields):
        m = fd.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, _F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, _F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, _F.TYPE_INT64, rep, None, None)])
    feature = message("Feature", [
        ("bytes_list", 1, _F.TYPE_MESSAGE, opt, ".shipyard.tfexample.BytesList", 0),
        ("float_list", 2, _F.TYPE_MESSAGE, opt, ".shipyard.tfexample.FloatList", 0),
        ("int64_list", 3, _F.TYPE_MESSAGE, opt, ".shipyard.tfexample.Int64List", 0),
    ])
    feature.oneof_decl.add(name="kind")
    features = message("Features", [("feature", 1, _F.TYPE_MESSAGE, rep, ".shipyard.tfexample.Features.FeatureEntry", None)])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".shipyard.tfexample.Feature")
    entry.options.map_entry = True
    message("Example", [("features", 1, _F.TYPE_MESSAGE, opt, ".shipyard.tfexample.Features", None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shipyard.tfexample.{name}"))
            for name in ("Example", "Feature")}


def encode(features: dict[str, np.ndarray | bytes | list]) -> bytes:
    """Serialise one Example: floats -> float_list, integers/bools -> int64_list, bytes -> bytes_list."""
    example = _classes()["Example"]()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, (bytes, bytearray)):
            feature.bytes_list.value.append(bytes(value))
            continue
        if isinstance(value, list) and value and isinstance(value[0], (bytes, bytearray)):
            feature.bytes_list.value.extend(value)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            feature.float_list.value.extend(arr.astype(np.float32).ravel().tolist())
        elif arr.dtype.kind in "iub":
            feature.int64_list.value.extend(arr.astype(np.int64).ravel().tolist())
        elif arr.dtype.kind in "SO":
            feature.bytes_list.value.extend(bytes(v) for v in arr.ravel())
        else:
            raise TypeError(f"feature '{name}': cannot store dtype {arr.dtype} in a tf.train.Example")
    return example.SerializeToString()


def decode(data: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """Features of one serialised Example: float32 / int64 arrays, or a list of bytes."""
    example = _classes()["Example"].FromString(data)
    out: dict[str, np.ndarray | list[bytes]] = {}
    for name, feature in sorted(example.features.feature.items()):
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            out[name] = np.array(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[name] = np.array(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            out[name] = list(feature.bytes_list.value)
        else:
            out[name] = np.array([], dtype=np.float32)
    return out
