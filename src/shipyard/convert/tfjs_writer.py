"""Writing a TF.js graph model (``model.json`` + binary weight shards) from a GraphDef.

Why by hand: the ``tensorflowjs`` converter cannot be installed next to TensorFlow 2.21
(it pins TF 2.19 and protobuf < 6 through tensorflow-decision-forests). The graph-model
format is small and documented: the topology is the GraphDef as proto3 JSON with constant
values moved out into little-endian shards listed in a weights manifest. No TensorFlow is
needed to write it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from shipyard.atomic import atomic_path
from shipyard.errors import UnsupportedError
from shipyard.formats import tf_protos
from shipyard.formats.tf_graph import signature_of
from shipyard.model import Signature

SHARD_BYTES = 4 * 1024 * 1024  # TF.js's default shard size
_WEIGHT_DTYPES = {"float32": "float32", "int32": "int32", "bool": "bool"}


def _tensor_info(spec) -> dict:
    info = {"name": spec.name if ":" in spec.name else f"{spec.name}:0", "dtype": _dt_enum_name(spec.dtype)}
    if spec.shape is not None:
        info["tensorShape"] = {"dim": [{"size": str(d if isinstance(d, int) else -1)} for d in spec.shape]}
    return info


def _dt_enum_name(dtype: str) -> str:
    reverse = {v: k for k, v in tf_protos.DTYPES.items()}
    from tensorboard.compat.proto import types_pb2

    return types_pb2.DataType.Name(reverse.get(dtype, 1))


def _quantize_uint8(value: np.ndarray) -> tuple[bytes, dict]:
    """TF.js's affine uint8 weight storage: value ~= q * scale + min (dequantized on load)."""
    lo, hi = float(value.min()), float(value.max())
    scale = (hi - lo) / 255.0 or 1.0
    q = np.round((value - lo) / scale).clip(0, 255).astype(np.uint8)
    return q.tobytes(), {"dtype": "uint8", "min": lo, "scale": scale}


def _fold_casts(topology) -> None:
    """Fold ``Const -> Cast`` pairs whose constant TF.js cannot hold (a float64 or int64 scalar
    cast to float32/int32, as Keras layers write for their hyper-parameters) into one constant
    of the cast type. tensorflowjs_converter gets the same from Grappler's constant folding;
    a Const read by anything other than such Casts is left for the dtype check below."""
    consts = {n.name: n for n in topology.node if n.op == "Const"}
    readers: dict[str, list] = {}
    for node in topology.node:
        for name in node.input:
            readers.setdefault(name.split(":")[0].lstrip("^"), []).append(node)
    for name, const in consts.items():
        dtype = tf_protos.dtype_name(const.attr["value"].tensor.dtype)
        users = readers.get(name, [])
        if dtype in _WEIGHT_DTYPES or not users or any(
                u.op != "Cast" or tf_protos.dtype_name(u.attr["DstT"].type) not in _WEIGHT_DTYPES for u in users):
            continue
        value = tf_protos.tensor_to_numpy(const.attr["value"].tensor)
        if value is None:
            continue
        for cast in users:
            target = tf_protos.dtype_name(cast.attr["DstT"].type)
            cast.op = "Const"
            del cast.input[:]
            cast.attr.clear()
            cast.attr["dtype"].type = tf_protos.types_enum(_dt_enum_name(target))
            folded = value.astype(target)
            tensor = cast.attr["value"].tensor
            tensor.dtype = tf_protos.types_enum(_dt_enum_name(target))
            for d in folded.shape:
                tensor.tensor_shape.dim.add(size=d)
            tensor.tensor_content = folded.astype(folded.dtype.newbyteorder("<")).tobytes()
        topology.node.remove(const)


def write_graph_model(graph_def, out_dir: Path, signature: Signature | None = None,
                      quantize_uint8: bool = False) -> Path:
    """Write ``out_dir/model.json`` and its shards; returns the model.json path.

    ``quantize_uint8`` stores float weights of 16 or more elements as uint8 (4x smaller
    download; TF.js dequantizes them to float32 when it loads the model)."""
    topology = tf_protos.GraphDef()
    topology.CopyFrom(graph_def)
    _fold_casts(topology)
    manifest_weights: list[dict] = []
    blobs: list[bytes] = []
    for node in topology.node:
        if node.op != "Const":
            continue
        tensor = node.attr["value"].tensor
        value = tf_protos.tensor_to_numpy(tensor)
        dtype = tf_protos.dtype_name(tensor.dtype)
        if value is None or dtype not in _WEIGHT_DTYPES:
            raise UnsupportedError(
                f"constant '{node.name}' has dtype {dtype}, which TF.js weights cannot hold",
                hint="TF.js weights are float32, int32 or bool",
            )
        entry = {"name": node.name, "shape": list(value.shape), "dtype": _WEIGHT_DTYPES[dtype]}
        if quantize_uint8 and dtype == "float32" and value.size >= 16:
            data, entry["quantization"] = _quantize_uint8(value)
            blobs.append(data)
        else:
            blobs.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
        manifest_weights.append(entry)
        kept_shape = tensor.tensor_shape
        tensor.Clear()
        tensor.dtype = tf_protos.types_enum(_dt_enum_name(dtype))
        tensor.tensor_shape.CopyFrom(kept_shape)
    data = b"".join(blobs)
    shard_count = max(1, -(-len(data) // SHARD_BYTES))
    names = [f"group1-shard{i + 1}of{shard_count}.bin" for i in range(shard_count)]
    signature = signature or signature_of(graph_def)
    doc = {
        "format": "graph-model",
        "generatedBy": f"GraphDef producer {graph_def.versions.producer}",
        "convertedBy": "shipyard",
        "modelTopology": json_format.MessageToDict(topology),
        "weightsManifest": [{"paths": names, "weights": manifest_weights}],
        "signature": {
            "inputs": {s.name: _tensor_info(s) for s in signature.inputs},
            "outputs": {s.name: _tensor_info(s) for s in signature.outputs},
        },
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True) as tmp:
        for i, name in enumerate(names):
            (tmp / name).write_bytes(data[i * SHARD_BYTES : (i + 1) * SHARD_BYTES])
        (tmp / "model.json").write_text(json.dumps(doc))
    return out_dir / "model.json"
