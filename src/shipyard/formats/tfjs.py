"""TF.js models: ``model.json`` plus binary weight shards.

A graph model's topology is a GraphDef written as JSON, so it is parsed into the same proto
and summarised by the GraphDef code; weights come from the manifest.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from shipyard import flops as F
from shipyard.errors import ModelFormatError
from shipyard.formats import tf_graph, tf_protos
from shipyard.model import Model, Signature, TensorSpec, tensor_name
from shipyard.summary import Summary, add_param, histogram

_DTYPES = {"float32": "float32", "int32": "int32", "bool": "bool", "string": "string",
           "complex64": "complex64", "uint8": "uint8", "int8": "int8", "float16": "float16"}


def file_reader(model: Model) -> Callable[[str], bytes]:
    """Read a file of the model by its name relative to model.json (from the decrypted
    archive, in memory, when the model is encrypted)."""
    if model.encrypted:
        from shipyard.protect import untar

        files = untar(model.read_bytes())

        def read(name: str) -> bytes:
            if name not in files:
                raise ModelFormatError(f"{model.path}: the encrypted TF.js model has no file '{name}'")
            return files[name]

        return read
    base = model.path if model.path.is_dir() else model.path.parent

    def read_file(name: str) -> bytes:
        try:
            return (base / name).read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"{base / name}: a file of the TF.js model is missing ({exc.strerror})") from exc

    return read_file


def model_json(model: Model, read: Callable[[str], bytes] | None = None) -> tuple[Path, dict]:
    path = model.path / "model.json" if model.path.is_dir() else model.path
    name = "model.json" if model.encrypted or model.path.is_dir() else model.path.name
    try:
        doc = json.loads((read or file_reader(model))(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: the TF.js model.json cannot be read ({exc})") from exc
    return path, doc


def graph_def(doc: dict, path: Path):
    if doc.get("format") == "layers-model":
        return None
    try:
        return json_format.ParseDict(doc["modelTopology"], tf_protos.GraphDef(), ignore_unknown_fields=True)
    except (json_format.ParseError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path}: the model topology is not a valid GraphDef ({exc})") from exc


def weights(doc: dict) -> list[dict]:
    return [w for group in doc.get("weightsManifest", []) for w in group.get("weights", [])]


def read_weights(path: Path, doc: dict, read: Callable[[str], bytes]) -> dict[str, np.ndarray]:
    """Decode every weight of the manifest from its shards (group by group, in order)."""
    out: dict[str, np.ndarray] = {}
    for group in doc.get("weightsManifest", []):
        blob = b"".join(read(p) for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = tuple(w["shape"])
            count = F.numel(shape) if shape else 1
            q = w.get("quantization")
            dtype = np.dtype(q["dtype"]) if q else np.dtype(_DTYPES.get(w["dtype"], w["dtype"]))
            end = offset + count * dtype.itemsize
            if end > len(blob):
                raise ModelFormatError(f"{path}: the weight shards are truncated (weight '{w['name']}' needs byte {end}, shards hold {len(blob)})")
            arr = np.frombuffer(blob, dtype, count, offset).reshape(shape)
            if q:
                arr = arr.astype(np.float32) * q.get("scale", 1.0) + q.get("min", 0.0)
            out[w["name"]] = arr
            offset = end
    return out


def load(model: Model):
    """(model.json path, its document, the topology with every constant's value put back from
    the shards, or None for a layers model); files are read (or decrypted) once."""
    read = file_reader(model)
    path, doc = model_json(model, read)
    gd = graph_def(doc, path)
    if gd is None:
        return path, doc, None
    values = read_weights(path, doc, read)
    for node in gd.node:
        if node.name in values and node.op == "Const":
            tensor = node.attr["value"].tensor
            value = values[node.name]
            tensor.tensor_content = np.ascontiguousarray(value, dtype=tf_protos.dtype_name(tensor.dtype)).tobytes()
    return path, doc, gd


def full_graph_def(model: Model):
    """The runnable GraphDef of a graph model (no TensorFlow needed to build it)."""
    return load(model)[2]


def _sig_from_doc(doc: dict) -> Signature | None:
    sig = doc.get("signature") or doc.get("userDefinedMetadata", {}).get("signature")
    if not sig:
        return None

    def spec(key, info):
        dims = info.get("tensorShape", {}).get("dim", [])
        shape = tuple(int(d.get("size", -1)) for d in dims) if "unknownRank" not in info.get("tensorShape", {}) else None
        dtype = tf_protos.dtype_name(tf_protos.types_enum(info.get("dtype", "DT_FLOAT")))
        return TensorSpec(tensor_name(info.get("name", key)), dtype, shape)

    return Signature(
        tuple(spec(k, v) for k, v in sig.get("inputs", {}).items()),
        tuple(spec(k, v) for k, v in sig.get("outputs", {}).items()),
    )


def signature(model: Model) -> Signature:
    path, doc = model_json(model)
    from_doc = _sig_from_doc(doc)
    if from_doc is not None:
        return from_doc
    gd = graph_def(doc, path)
    if gd is None:
        return Signature((), ())
    return tf_graph.signature_of(gd)


def summarize(model: Model) -> Summary:
    path, doc, gd = load(model)
    params = 0
    param_bytes: dict[str, int] = {}
    for w in weights(doc):
        count = F.numel(w["shape"]) if w["shape"] else 1
        params += count
        q = w.get("quantization")
        dtype = q["dtype"] if q else w["dtype"]
        add_param(param_bytes, dtype, count * np.dtype(_DTYPES.get(dtype, dtype)).itemsize)
    size = model.path.stat().st_size if model.encrypted else path.stat().st_size + sum(
        (path.parent / p).stat().st_size for g in doc.get("weightsManifest", []) for p in g.get("paths", [])
        if (path.parent / p).is_file()
    )
    if gd is not None:
        summary = tf_graph.summarize_graph_def(gd, None, path, "tfjs", size)
        sig = _sig_from_doc(doc)
        if sig is not None:
            summary.inputs, summary.outputs = list(sig.inputs), list(sig.outputs)
    else:
        layers = doc["modelTopology"].get("model_config", doc["modelTopology"]).get("config", {}).get("layers", [])
        summary = Summary("tfjs", str(path), size, [], [], histogram(layer.get("class_name", "?") for layer in layers), 0)
    summary.params, summary.param_bytes = params, param_bytes
    summary.producer = " ".join(x for x in (doc.get("generatedBy"), doc.get("convertedBy")) if x) or None
    summary.version = doc.get("format", "graph-model")
    summary.details["weight_shards"] = sum(len(g.get("paths", [])) for g in doc.get("weightsManifest", []))
    return summary
