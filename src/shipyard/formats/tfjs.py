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

from shipyard.errors import ModelFormatError
from shipyard.formats import tf_graph, tf_protos
from shipyard.model import Model, Signature, TensorSpec, tensor_name
from shipyard.summary import Summary, add_param, histogram

_DTYPES = {"float32": "float32", "int32": "int32", "bool": "bool", "string": "string",
           "complex64": "complex64", "uint8": "uint8", "int8": "int8", "float16": "float16"}
_QUANT_DTYPES = ("uint8", "uint16", "float16")


# ---------------------------------------------------------------- the weights manifest, checked


def manifest(doc, path: Path) -> list[tuple[list[str], list[dict]]]:
    """The weights manifest as [(shard names, weights)], its structure checked: every weight
    has a name, a shape of non-negative integers and a known dtype (or quantization), and every
    shard name is a plain relative path inside the model's folder."""
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{path}: model.json is not a JSON object")
    groups = doc.get("weightsManifest", [])
    if not isinstance(groups, list):
        raise ModelFormatError(f"{path}: 'weightsManifest' is not a list")
    out = []
    for g, group in enumerate(groups):
        where = f"{path}: weightsManifest[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("paths"), list) \
                or not isinstance(group.get("weights"), list):
            raise ModelFormatError(f"{where} needs a list of 'paths' and a list of 'weights'")
        for name in group["paths"]:
            check_shard_name(name, where)
        for i, w in enumerate(group["weights"]):
            _check_weight(w, f"{where}.weights[{i}]")
        out.append((list(group["paths"]), list(group["weights"])))
    return out


def check_shard_name(name, where) -> str:
    """A weight file's name from the manifest: relative, inside the model folder, no '..'."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ModelFormatError(f"{where}: a weight path is not a file name: {name!r}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise ModelFormatError(f"{where}: the weight path '{name}' leaves the model's folder "
                               "(weight paths must be relative, without '..')")
    return name


def _check_weight(w, where: str) -> None:
    if not isinstance(w, dict) or not isinstance(w.get("name"), str):
        raise ModelFormatError(f"{where}: a weight needs a 'name'")
    shape = w.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                                              for d in shape):
        raise ModelFormatError(f"{where} ('{w['name']}'): 'shape' must be a list of non-negative integers, "
                               f"not {shape!r:.80}")
    if w.get("dtype") not in _DTYPES:
        raise ModelFormatError(f"{where} ('{w['name']}'): unknown dtype {w.get('dtype')!r:.40} "
                               f"(TF.js weights are {', '.join(_DTYPES)})")
    q = w.get("quantization")
    if q is not None and (not isinstance(q, dict) or q.get("dtype") not in _QUANT_DTYPES or not all(
            isinstance(q.get(k, 0.0), (int, float)) and not isinstance(q.get(k, 0.0), bool) for k in ("scale", "min"))):
        raise ModelFormatError(f"{where} ('{w['name']}'): bad quantization {q!r:.80} "
                               f"(dtype one of {', '.join(_QUANT_DTYPES)}, numeric scale and min)")


def _elements(w: dict) -> int:
    return int(np.prod(w["shape"], dtype=object)) if w["shape"] else 1


def _stored_dtype(w: dict) -> np.dtype:
    q = w.get("quantization")
    if w["dtype"] == "string" and not q:
        raise ModelFormatError(f"weight '{w['name']}': string weights are not supported")
    return np.dtype(q["dtype"] if q else _DTYPES[w["dtype"]])


def declared_bytes(weights_: list[dict]) -> int:
    return sum(_elements(w) * _stored_dtype(w).itemsize for w in weights_)


def weight_file(base: Path, name: str) -> Path:
    """The file of a shard name: inside ``base`` once links are resolved, and a regular file."""
    path = base / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ModelFormatError(f"{path}: a weight file of the TF.js model is missing "
                               f"({getattr(exc, 'strerror', None) or exc})") from exc
    if not real.is_relative_to(base.resolve()):
        raise ModelFormatError(f"{path}: the weight file links outside the model's folder (to {real})")
    if not real.is_file():
        raise ModelFormatError(f"{path}: a weight file of the TF.js model is not a regular file")
    return path


def weight_files(base: Path, doc, path: Path) -> list[Path]:
    """Every weight file of the manifest, each checked by :func:`weight_file`."""
    return [weight_file(base, n) for names, _ in manifest(doc, path) for n in names]


def files(path: Path) -> dict[str, Path]:
    """model.json and the weight files it names ({name relative to the model's folder: path}),
    each checked to lie inside that folder."""
    base = path if path.is_dir() else path.parent
    json_path, doc = model_json(Model("tfjs", path))
    found = {"model.json": json_path}
    found.update((n, weight_file(base, n)) for names, _ in manifest(doc, json_path) for n in names)
    return found


class _Reader:
    """Read a file of the model by its name relative to model.json (from the decrypted
    archive, in memory, when the model is encrypted); ``size`` says how big it is first."""

    def __init__(self, model: Model):
        self.model = model
        self.files: dict[str, bytes] | None = None
        if model.encrypted:
            from shipyard.protect import untar

            self.files = untar(model.read_bytes(), model.path)
        self.base = model.path if model.path.is_dir() else model.path.parent

    def _file(self, name: str) -> Path:
        return self.base / name if name == "model.json" or name == self.model.path.name else weight_file(self.base, name)

    def size(self, name: str) -> int:
        if self.files is not None:
            if name not in self.files:
                raise ModelFormatError(f"{self.model.path}: the encrypted TF.js model has no file '{name}'")
            return len(self.files[name])
        return self._file(name).stat().st_size

    def __call__(self, name: str) -> bytes:
        if self.files is not None:
            self.size(name)
            return self.files[name]
        path = self._file(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"{path}: a file of the TF.js model cannot be read ({exc.strerror})") from exc


def file_reader(model: Model) -> Callable[[str], bytes]:
    return _Reader(model)


def model_json(model: Model, read: Callable[[str], bytes] | None = None) -> tuple[Path, dict]:
    path = model.path / "model.json" if model.path.is_dir() else model.path
    name = "model.json" if model.encrypted or model.path.is_dir() else model.path.name
    try:
        doc = json.loads((read or file_reader(model))(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: the TF.js model.json cannot be read ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("modelTopology"), dict):
        raise ModelFormatError(f"{path}: the TF.js model.json has no 'modelTopology' object")
    manifest(doc, path)
    return path, doc


def graph_def(doc: dict, path: Path):
    if doc.get("format") == "layers-model":
        return None
    try:
        return json_format.ParseDict(doc["modelTopology"], tf_protos.GraphDef(), ignore_unknown_fields=True)
    except (json_format.ParseError, KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: the model topology is not a valid GraphDef ({exc})") from exc


def weights(doc: dict, path: Path | str = "model.json") -> list[dict]:
    return [w for _, group in manifest(doc, Path(path)) for w in group]


def read_weights(path: Path, doc: dict, read: Callable[[str], bytes]) -> dict[str, np.ndarray]:
    """Decode every weight of the manifest from its shards (group by group, in order), after
    checking that the shards are as big as the weights they declare."""
    out: dict[str, np.ndarray] = {}
    for names, group in manifest(doc, path):
        declared = declared_bytes(group)
        sizes = [read.size(n) for n in names] if isinstance(read, _Reader) else None
        if sizes is not None and sum(sizes) != declared:
            raise ModelFormatError(f"{path}: the weight files {', '.join(names)} hold {sum(sizes)} bytes; the "
                                   f"manifest declares {declared} ({'truncated' if sum(sizes) < declared else 'too long'})")
        blob = b"".join(read(p) for p in names)
        offset = 0
        for w in group:
            shape = tuple(w["shape"])
            count = _elements(w)
            q = w.get("quantization")
            dtype = _stored_dtype(w)
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
            try:
                tensor.tensor_content = np.ascontiguousarray(value, dtype=tf_protos.dtype_name(tensor.dtype)).tobytes()
            except (TypeError, ValueError) as exc:
                raise ModelFormatError(f"{path}: constant '{node.name}' has dtype "
                                       f"{tf_protos.dtype_name(tensor.dtype)}, which its weight cannot fill") from exc
    return path, doc, gd


def full_graph_def(model: Model):
    """The runnable GraphDef of a graph model (no TensorFlow needed to build it)."""
    return load(model)[2]


def _sig_from_doc(doc: dict) -> Signature | None:
    try:
        return _signature_entry(doc)
    except (AttributeError, TypeError, ValueError) as exc:  # a mistyped field, an unknown DT_ name
        raise ModelFormatError(f"model.json: the 'signature' is malformed ({exc})") from exc


def _signature_entry(doc: dict) -> Signature | None:
    sig = doc.get("signature") or doc.get("userDefinedMetadata", {}).get("signature")
    if not sig:
        return None

    def spec(key, info):
        dims = info.get("tensorShape", {}).get("dim", [])
        shape = tuple(int(d.get("size", -1)) for d in dims) if "unknownRank" not in info.get("tensorShape", {}) else None
        dtype = tf_protos.dtype_name(tf_protos.types_enum(info.get("dtype", "DT_FLOAT")))
        return TensorSpec(tensor_name(str(info.get("name", key))), dtype, shape)

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
    for w in weights(doc, path):
        count = _elements(w)
        params += count
        q = w.get("quantization")
        dtype = q["dtype"] if q else w["dtype"]
        add_param(param_bytes, dtype, count * (_stored_dtype(w).itemsize if dtype != "string" else 0))
    size = model.path.stat().st_size if model.encrypted else path.stat().st_size + sum(
        p.stat().st_size for p in weight_files(path.parent, doc, path))
    if gd is not None:
        summary = tf_graph.summarize_graph_def(gd, None, path, "tfjs", size)
        sig = _sig_from_doc(doc)
        if sig is not None:
            summary.inputs, summary.outputs = list(sig.inputs), list(sig.outputs)
    else:
        try:
            layers = doc["modelTopology"].get("model_config", doc["modelTopology"]).get("config", {}).get("layers", [])
            kinds = histogram(str(layer.get("class_name", "?")) for layer in layers)
        except (AttributeError, TypeError) as exc:
            raise ModelFormatError(f"{path}: the layers model's topology is malformed ({exc})") from exc
        summary = Summary("tfjs", str(path), size, [], [], kinds, 0)
    summary.params, summary.param_bytes = params, param_bytes
    summary.producer = " ".join(x for x in (doc.get("generatedBy"), doc.get("convertedBy")) if x) or None
    summary.version = doc.get("format", "graph-model")
    summary.details["weight_shards"] = sum(len(names) for names, _ in manifest(doc, path))
    return summary
