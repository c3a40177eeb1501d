"""SavedModel directories: signatures, ops and variables read from ``saved_model.pb`` alone.

FLOPs need the functions traced and frozen, which needs TensorFlow; they are counted when
TensorFlow is installed and reported as unknown (with the reason) when it is not.
"""
from __future__ import annotations

from shipyard import flops as F
from shipyard.errors import ModelFormatError, ShipyardError, UnsupportedError
from shipyard.formats import tf_protos
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

DEFAULT_SIGNATURE = "serving_default"


def serving_meta(model: Model):
    if model.encrypted:
        from shipyard.protect import untar

        files = untar(model.read_bytes())
        return _serving(tf_protos.parse_saved_model(model.path, files.get("saved_model.pb")))
    return _serving(tf_protos.parse_saved_model(model.path))


def _serving(metas):
    for meta in metas:
        if "serve" in meta.meta_info_def.tags:
            return meta
    return metas[0]


def pick_signature_key(meta, key: str | None = None) -> str:
    keys = [k for k in meta.signature_def if not k.startswith("__")]
    if key is not None:
        if key not in meta.signature_def:
            raise ModelFormatError(f"the SavedModel has no signature '{key}'", hint=f"signatures: {', '.join(keys) or 'none'}")
        return key
    if DEFAULT_SIGNATURE in meta.signature_def:
        return DEFAULT_SIGNATURE
    if not keys:
        raise ModelFormatError("the SavedModel has no signatures to run", hint="export it with a serving signature")
    return sorted(keys)[0]


def _spec(key: str, info) -> TensorSpec:
    return TensorSpec(key, tf_protos.dtype_name(info.dtype), tf_protos.shape_of(info.tensor_shape))


def signature_of(meta, key: str | None = None) -> Signature:
    sig = meta.signature_def[pick_signature_key(meta, key)]
    return Signature(
        tuple(_spec(k, v) for k, v in sorted(sig.inputs.items())),
        tuple(_spec(k, v) for k, v in sorted(sig.outputs.items())),
    )


def signature(model: Model, key: str | None = None) -> Signature:
    return signature_of(serving_meta(model), key)


def summarize(model: Model) -> Summary:
    meta = serving_meta(model)
    sig = signature_of(meta)
    ops = [n.op for n in meta.graph_def.node]
    for fn in meta.graph_def.library.function:
        ops.extend(n.op for n in fn.node_def)
    params = 0
    param_bytes: dict[str, int] = {}
    seen: set[str] = set()
    for node in meta.object_graph_def.nodes:
        # Keras exports reference each variable from several trackable nodes: count it once.
        if node.HasField("variable") and node.variable.name not in seen:
            seen.add(node.variable.name)
            shape = tf_protos.shape_of(node.variable.shape) or ()
            dtype = tf_protos.dtype_name(node.variable.dtype)
            params += F.numel(shape)
            add_param(param_bytes, dtype, F.numel(shape) * tf_protos.itemsize(dtype))
    size = model.path.stat().st_size if model.encrypted else sum(p.stat().st_size for p in model.path.rglob("*") if p.is_file())
    details = {
        "signatures": sorted(k for k in meta.signature_def if not k.startswith("__")),
        "tags": list(meta.meta_info_def.tags),
        "functions": len(meta.graph_def.library.function),
    }
    flops, by_op = None, {}
    try:
        from shipyard.formats.tf_flops import frozen_flops

        if model.encrypted:
            raise UnsupportedError("TensorFlow cannot load an encrypted SavedModel from memory to count its FLOPs")
        tally = frozen_flops(model)
        flops, by_op = tally.total, tally.sorted_by_op()
        details["flops_uncounted_ops"] = tally.uncounted
    except ShipyardError as exc:
        details["flops_unavailable"] = exc.message
    return Summary(
        format="tf-savedmodel",
        path=str(model.path),
        size_bytes=size,
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(ops),
        params=params,
        param_bytes=param_bytes,
        flops=flops,
        flops_by_op=by_op,
        producer=f"TensorFlow {meta.meta_info_def.tensorflow_version}" if meta.meta_info_def.tensorflow_version else None,
        version=f"graph version {meta.graph_def.versions.producer}",
        details=details,
    )
