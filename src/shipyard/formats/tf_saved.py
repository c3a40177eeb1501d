"""SavedModel directories: signatures, ops and variables read from ``saved_model.pb`` and
``variables/variables.index`` alone, plus the one place that loads a signature with TensorFlow.

FLOPs need the functions traced and frozen, which needs TensorFlow; they are counted when
TensorFlow is installed and reported as unknown (with the reason) when it is not.
"""
from __future__ import annotations

import gc
import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard import flops as F
from shipyard.errors import ModelFormatError, ModelLoadError, ShipyardError, UnsupportedError
from shipyard.formats import tf_protos
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

DEFAULT_SIGNATURE = "serving_default"
VARIABLES_INDEX = "variables/variables.index"


def serving_meta(model: Model):
    if model.encrypted:
        from shipyard.protect import untar

        files = untar(model.read_bytes(), model.path)
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
            raise ModelFormatError(f"the SavedModel has no signature '{key}'", hint=f"signatures: {', '.join(sorted(keys)) or 'none'}")
        return key
    if DEFAULT_SIGNATURE in meta.signature_def:
        return DEFAULT_SIGNATURE
    if not keys:
        raise ModelFormatError("the SavedModel has no signatures to run", hint="export it with a serving signature")
    return min(keys)


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


# ---------------------------------------------------------------- loading with TensorFlow


@dataclass
class LoadedSignature:
    """One signature of a SavedModel, loaded by TensorFlow and ready to call or trace.

    ``function`` takes the signature's inputs as keyword tensors and returns ``{key: tensor}``;
    ``owner`` keeps the restored variables alive; ``loader`` says which loader read it.
    """

    key: str
    function: Any
    owner: Any
    loader: str
    path: str = ""
    tags: tuple[str, ...] = ("serve",)

    def concrete(self, batch: int | None = None):
        """A concrete function over the signature with its inputs named after the signature's
        keys (so a frozen graph's placeholders carry them); ``batch`` fixes unknown batch dims."""
        import tensorflow as tf

        _, kwargs = self.function.structured_input_signature
        specs = {
            k: tf.TensorSpec([batch if (batch is not None and d is None) else d for d in v.shape]
                             if v.shape.rank is not None else None, v.dtype, name=k)
            for k, v in kwargs.items()
        }
        fn = self.function
        return tf.function(lambda **kw: fn(**kw)).get_concrete_function(**specs)

    def frozen_graph_def(self, batch: int | None = None):
        """(concrete function or None, GraphDef with every variable folded into a constant).

        From the object-graph loader: the traced signature (inputs named after the signature's
        keys, outputs keyed by them; the caller names the output nodes) and its frozen graph.
        From the TF1 loader: None, and a graph whose inputs and outputs are named by the keys.

        A SavedModel read by the TF1 loader is frozen the TF1 way, in a v1 Session
        (``convert_variables_to_constants``, as tf2onnx does): ``convert_variables_to_constants_v2``
        leaves the variables of a function the TF1 loader pruned as variables. Its library
        functions get names of their own (see ``_rename_functions``).
        """
        from shipyard.formats.tf_freeze import freeze_concrete_function

        if self.loader != "TF1 loader":
            concrete = self.concrete(batch)
            return concrete, freeze_concrete_function(concrete)
        import tensorflow as tf

        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            meta = tf.compat.v1.saved_model.loader.load(session, self.tags, self.path)
            sig = meta.signature_def[self.key]
            inputs = {k: v.name for k, v in sorted(sig.inputs.items())}
            outputs = {k: (v.name, v.dtype) for k, v in sorted(sig.outputs.items())}
            nodes = sorted({name.split(":")[0] for name, _ in outputs.values()})
            graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), nodes)
        return None, _name_signature(_inline_functions(graph_def, nodes), inputs, outputs, batch)


def _inline_functions(graph_def, outputs: list[str]):
    """The graph with its function calls inlined by Grappler (what tf2onnx does to a SavedModel
    read by the TF1 loader): converters and the FLOP counter read plain ops, not calls."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = ["function", "dependency"]
    rewrite.min_graph_nodes = -1  # small graphs too
    with tf.Graph().as_default():
        meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(outputs)
    meta.collection_def["train_op"].CopyFrom(fetch)
    return tf_optimizer.OptimizeGraph(config, meta)


def _name_signature(graph_def, inputs: dict[str, str], outputs: dict[str, tuple[str, int]], batch: int | None):
    """A session-frozen signature graph with an Identity named after each output key, its
    placeholders renamed to the input keys, pruned to those outputs, functions renamed.
    ``outputs``: {key: (tensor name, dtype enum)}."""
    from shipyard.formats.tf_freeze import name_outputs, prune_for_inference

    graph_def = tf_protos.GraphDef.FromString(graph_def.SerializeToString())
    existing = {n.name for n in graph_def.node}
    fetch = []
    for key, (tensor, dtype) in outputs.items():
        ref = tensor.removesuffix(":0")
        if key in existing:  # the output node already has the key's name, or the name is taken
            fetch.append(ref)
            continue
        identity = graph_def.node.add(name=key, op="Identity", input=[ref])
        identity.attr["T"].type = dtype
        existing.add(key)
        fetch.append(key)
    name_outputs(graph_def, [(t, k) for k, t in inputs.items()])
    for node in graph_def.node:
        dims = node.attr["shape"].shape.dim if node.op == "Placeholder" else []
        if batch is not None and dims and dims[0].size < 0:
            dims[0].size = batch
    return _rename_functions(prune_for_inference(graph_def, fetch))


def _rename_functions(graph_def):
    """The GraphDef with its library functions renamed ``<name>_frozen_<hash of the library>``.

    The TF1 loader registers a SavedModel's functions in TensorFlow's process-wide context
    (several times over, once per pruned signature); frozen copies under the same names are
    refused wherever they are registered again ("Attempting to add a duplicate function").
    Names derived from the content keep equal copies equal and different ones apart.
    """
    if not graph_def.library.function:
        return graph_def
    suffix = hashlib.sha1(graph_def.library.SerializeToString(deterministic=True)).hexdigest()[:10]
    names = {f.signature.name: f"{f.signature.name}_frozen_{suffix}" for f in graph_def.library.function}

    def fix(attrs) -> None:
        for value in attrs.values():
            if value.HasField("func") and value.func.name in names:
                value.func.name = names[value.func.name]
            for func in value.list.func:
                if func.name in names:
                    func.name = names[func.name]

    for node in graph_def.node:
        fix(node.attr)
    for function in graph_def.library.function:
        function.signature.name = names[function.signature.name]
        for node in function.node_def:
            fix(node.attr)
    for grad in graph_def.library.gradient:
        grad.function_name = names.get(grad.function_name, grad.function_name)
    return graph_def


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _has_optimizer_slots(meta) -> bool:
    return any(node.slot_variables for node in meta.object_graph_def.nodes)


def load_signature(model: Model, key: str | None = None) -> LoadedSignature:
    """Load one signature of a SavedModel: TF2's object-graph loader first, the TF1 loader
    when that fails.

    ``tf.saved_model.load`` revives every object of the SavedModel's object graph; it fails on
    exports whose objects it cannot rebuild without the library that wrote them — a Keras 2
    (tf.keras <= 2.15) model saved with its optimizer (``'_UserObject' object has no attribute
    'add_slot'``), custom Keras objects. The TF1 loader (the one ``tf.compat.v1.saved_model``
    and tf2onnx use) only imports the MetaGraph's graph and restores the variables into it, so
    it reads those exports; its signatures are the same functions of the same variables.
    An object graph that records optimizer slot variables goes to the TF1 loader straight
    away: TensorFlow re-creates slots only through the optimizer class that saved them, so the
    first attempt would only cost time. This is the only place shipyard loads a SavedModel
    with TensorFlow (``LoadedSignature.frozen_graph_def`` reloads it in a v1 Session to freeze).
    """
    from shipyard.deps import require

    tf = require("tensorflow", f"Loading the SavedModel {model.path}")
    if model.encrypted:
        raise UnsupportedError(
            f"{model.path}: TensorFlow loads SavedModels only from a directory on disk, so an encrypted "
            "SavedModel cannot be run without writing the plaintext",
            hint="convert it to ONNX, TFLite or a frozen GraphDef before encrypting; those load from memory",
        )
    meta = serving_meta(model)
    key = pick_signature_key(meta, key)
    check_variables(Path(model.path))
    first = "its object graph records optimizer slot variables" if _has_optimizer_slots(meta) else None
    if first is None:
        try:
            loaded = tf.saved_model.load(str(model.path))
            return LoadedSignature(key, loaded.signatures[key], loaded, "tf.saved_model.load")
        except Exception as exc:  # noqa: BLE001 - AttributeError (Keras 2 slots), KeyError/ValueError (custom objects)
            first = _first_line(exc)
        gc.collect()  # free what the failed load built before loading again
    try:
        from tensorflow.python.saved_model import load_v1_in_v2

        loaded = load_v1_in_v2.load(str(model.path), list(meta.meta_info_def.tags))
    except Exception as exc:  # reported with the first loader's reason
        raise ModelLoadError(
            f"{model.path}: TensorFlow cannot load the SavedModel ({first}; "
            f"the TF1 loader: {_first_line(exc)})"
        ) from exc
    return LoadedSignature(key, loaded.signatures[key], loaded, "TF1 loader", str(model.path),
                           tuple(meta.meta_info_def.tags))


# ---------------------------------------------------------------- variables and parameters


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return tf_protos._varint(data, pos)
    except IndexError as exc:
        raise ValueError("truncated varint") from exc


def _table_block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries of one block of a LevelDB-format table (TF's tensor bundle index)."""
    if offset + size + 5 > len(data):
        raise ValueError("block outside the file")
    if data[offset + size] != 0:
        raise ValueError("compressed block (TensorFlow writes the bundle index uncompressed)")
    block = data[offset:offset + size]
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * restarts
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _read_varint(block, pos)
        unshared, pos = _read_varint(block, pos)
        length, pos = _read_varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
    return entries


def _bundle_entry(value: bytes, extent: dict | None = None) -> tuple[int, tuple[int, ...] | None, bool]:
    """(dtype enum, shape, partitioned) from a BundleEntryProto (decoded by hand: TensorBoard
    ships no tensor_bundle.proto); ``extent`` receives its shard_id, offset and size."""
    from tensorboard.compat.proto import tensor_shape_pb2

    dtype, shape, sliced, pos = 0, (), False, 0
    while pos < len(value):
        tag, pos = _read_varint(value, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            number, pos = _read_varint(value, pos)
            if field == 1:
                dtype = number
            elif extent is not None and field in (3, 4, 5):
                extent[("shard", "offset", "size")[field - 3]] = number
        elif wire == 2:
            length, pos = _read_varint(value, pos)
            if field == 2:
                shape = tf_protos.shape_of(tensor_shape_pb2.TensorShapeProto.FromString(value[pos:pos + length]))
            elif field == 7:
                sliced = True
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return dtype, shape, sliced


def check_variables(directory: Path) -> None:
    """Before TensorFlow restores a SavedModel's variables: ``variables.index`` is a regular
    file that parses, and every variable's bytes lie inside an existing data shard."""
    index = directory / VARIABLES_INDEX
    if not (directory / "variables").exists():
        return
    if not index.is_file():
        raise ModelFormatError(f"{index}: missing or not a regular file (the SavedModel's variable index)")
    data = index.read_bytes()
    extents: list[tuple[str, dict]] = []
    try:
        read_variables_index(data, extents)
    except (ValueError, IndexError, struct.error) as exc:
        raise ModelFormatError(f"{index}: truncated or corrupt ({exc})") from exc
    shards = {}
    for path in (directory / "variables").glob("variables.data-*-of-*"):
        try:
            shards[int(path.name.split("-")[1])] = path.stat().st_size if path.is_file() else -1
        except (ValueError, IndexError):
            continue
    for key, extent in extents:
        shard, end = extent.get("shard", 0), extent.get("offset", 0) + extent.get("size", 0)
        if end and shards.get(shard, -1) < end:
            have = shards.get(shard)
            raise ModelFormatError(
                f"{directory}: variable '{key}' needs bytes up to {end} of data shard {shard}, which "
                + ("is missing" if have is None or have < 0 else f"has {have} bytes (truncated)"),
                hint="the SavedModel's variables are incomplete; copy or export it again")


def read_variables_index(data: bytes, extents: list | None = None) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """{checkpoint key: (dtype, shape)} of a tensor bundle's ``.index`` file, without TensorFlow.

    The index is a LevelDB-format table: a 48-byte footer points to the index block, whose
    entries point to the data blocks; each entry maps a checkpoint key to a BundleEntryProto.
    Key ``""`` is the bundle header; keys starting with a NUL byte are the slices of a
    partitioned variable, which is also listed whole under its own name.
    """
    if len(data) < 48 or data[-8:] != struct.pack("<Q", 0xDB4775248B80FB57):
        raise ValueError("not a TensorFlow table (bad magic number)")
    footer = data[-48:]
    _, pos = _read_varint(footer, 0)
    _, pos = _read_varint(footer, pos)
    index_offset, pos = _read_varint(footer, pos)
    index_size, pos = _read_varint(footer, pos)
    out: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for _, handle in _table_block(data, index_offset, index_size):
        offset, p = _read_varint(handle, 0)
        size, _ = _read_varint(handle, p)
        for key, value in _table_block(data, offset, size):
            if not key or key.startswith(b"\x00"):
                continue
            extent: dict = {}
            dtype, shape, _sliced = _bundle_entry(value, extent)
            out[key.decode("utf-8", "replace")] = (tf_protos.dtype_name(dtype), shape)
            if extents is not None:
                extents.append((key.decode("utf-8", "replace"), extent))
    return out


# TF2 object-based checkpoint keys: "<object path>/.ATTRIBUTES/VARIABLE_VALUE".
_OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_OPTIMIZER_SLOT = "/.OPTIMIZER_SLOT/"
# Bookkeeping, not weights: the object graph itself, tf.train.Checkpoint's counter, training steps.
_COUNTERS = {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "global_step"}
# TF1 optimizers' step-dependent scalars (Adam's beta powers), named after the optimizer's scope.
_TF1_OPTIMIZER_SCALARS = re.compile(r"(^|/)(beta1_power|beta2_power)(_\d+)?$")


def model_variables(stored: dict[str, tuple[str, tuple[int, ...] | None]]) -> tuple[dict, dict[str, int]]:
    """Split a SavedModel's checkpoint into the model's variables and training state
    (see ``count_params``): optimizer slot variables (Adam's m and v, momentum accumulators),
    the optimizer's step counters and hyper-parameter variables, Keras' metric totals and the
    checkpoint's own bookkeeping (``save_counter``, ``global_step``) are training state.

    Object-based (TF2) checkpoints mark slots with ``.OPTIMIZER_SLOT``; the optimizer's own
    variables live under an ``optimizer`` object and metrics under ``keras_api/metrics``.
    Name-based (TF1, e.g. ``simple_save``) checkpoints name a slot ``<variable>/<slot>``
    (``w/Adam``, ``w/Adam_1``, ``w/Momentum``), with the variable's shape.
    Returns ({key: (dtype, shape)} of the model's variables, {reason: count} of the rest).
    """
    kept: dict = {}
    excluded: dict[str, int] = {}

    def drop(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    for key, (dtype, shape) in stored.items():
        object_based = key.endswith(_OBJECT_SUFFIX)
        path = key[: -len(_OBJECT_SUFFIX)] if object_based else key
        parts = path.split("/")
        if path in _COUNTERS or parts[-1] == "global_step":
            drop("counters")
        elif _OPTIMIZER_SLOT in key or (not object_based and _is_tf1_slot(key, shape, stored)):
            drop("optimizer slots")
        elif (object_based and parts[0] == "optimizer") or (not object_based and _TF1_OPTIMIZER_SCALARS.search(path)):
            drop("optimizer state")
        elif object_based and path.startswith("keras_api/metrics/"):
            drop("metrics")
        else:
            kept[key] = (dtype, shape)
    return kept, excluded


def _is_tf1_slot(key: str, shape, stored: dict) -> bool:
    owner = key.rpartition("/")[0]
    return bool(owner) and owner in stored and stored[owner][1] == shape


def _index_bytes(model: Model) -> bytes | None:
    if model.encrypted:
        from shipyard.protect import untar

        return untar(model.read_bytes(), model.path).get(VARIABLES_INDEX)
    path = Path(model.path) / VARIABLES_INDEX
    if path.exists() and not path.is_file():
        raise ModelFormatError(f"{path}: not a regular file (the SavedModel's variable index)")
    return path.read_bytes() if path.is_file() else None


def _signature_variables(meta, key: str) -> list[tuple[str, tuple[int, ...] | None]] | None:
    """(dtype, shape) of every variable the signature's function captures, once per variable
    object, from the SavedModel's object graph; None when there is no object graph (TF1)."""
    graph = meta.object_graph_def
    if not graph.nodes:
        return None
    holder = next((c.node_id for c in graph.nodes[0].children if c.local_name == "signatures"), None)
    if holder is None:
        return None
    node_id = next((c.node_id for c in graph.nodes[holder].children if c.local_name == key), None)
    if node_id is None:
        return None
    node = graph.nodes[node_id]
    kind = node.WhichOneof("kind")
    if kind == "bare_concrete_function":
        names = [node.bare_concrete_function.concrete_function_name]
    elif kind == "function":
        names = list(node.function.concrete_functions)
    else:
        return None
    ids = {i for name in names if name in graph.concrete_functions for i in graph.concrete_functions[name].bound_inputs}
    return [(tf_protos.dtype_name(graph.nodes[i].variable.dtype), tf_protos.shape_of(graph.nodes[i].variable.shape))
            for i in sorted(ids) if graph.nodes[i].HasField("variable")]


def count_params(model: Model, meta) -> tuple[int, dict[str, int], dict[str, Any]]:
    """(parameters, bytes per dtype, details) of a SavedModel's serving signature.

    Parameters are what Keras' ``count_params()`` counts: every element of every variable the
    model computes with — trainable weights and non-trainable state such as batch-norm moving
    statistics — and nothing of its training state: optimizer slots (Adam's m and v), the
    optimizer's step counter and hyper-parameters, metric totals, checkpoint counters.
    A TF2 SavedModel says exactly which variables its signature function captures (object
    graph ``bound_inputs``), which counts each once even where an export tracks one variable
    under two objects (Keras 3 ``export`` does) or several variables share a name. A TF1
    SavedModel (``simple_save``, the builder) has no object graph: its variables are read
    from ``variables/variables.index`` and training state is recognised by name
    (see ``model_variables``).
    """
    params = 0
    param_bytes: dict[str, int] = {}
    details: dict[str, Any] = {}
    captured = None
    try:
        captured = _signature_variables(meta, pick_signature_key(meta))
    except ModelFormatError:
        pass
    if captured is None:
        data = _index_bytes(model)
        if data is None:
            return 0, {}, {"variables": 0}
        try:
            kept, excluded = model_variables(read_variables_index(data))
        except (ValueError, IndexError, struct.error) as exc:
            raise ModelFormatError(f"{model.path}: {VARIABLES_INDEX} is truncated or corrupt ({exc})") from exc
        captured = list(kept.values())
        if excluded:
            details["variables_not_counted"] = excluded
    for dtype, shape in captured:
        count = F.numel(shape or ())
        params += count
        add_param(param_bytes, dtype, count * tf_protos.itemsize(dtype))
    details["variables"] = len(captured)
    return params, param_bytes, details


def summarize(model: Model) -> Summary:
    meta = serving_meta(model)
    sig = signature_of(meta)
    ops = [n.op for n in meta.graph_def.node]
    for fn in meta.graph_def.library.function:
        ops.extend(n.op for n in fn.node_def)
    params, param_bytes, details = count_params(model, meta)
    size = model.path.stat().st_size if model.encrypted else sum(p.stat().st_size for p in model.path.rglob("*") if p.is_file())
    details.update({
        "signatures": sorted(k for k in meta.signature_def if not k.startswith("__")),
        "tags": list(meta.meta_info_def.tags),
        "functions": len(meta.graph_def.library.function),
    })
    flops, by_op = None, {}
    try:
        from shipyard.formats.tf_freeze import frozen_flops

        if model.encrypted:
            raise UnsupportedError("TensorFlow cannot load an encrypted SavedModel from memory to count its FLOPs")
        tally = frozen_flops(load_signature(model).frozen_graph_def(batch=1)[1])
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


def frozen_graph_def(model: Model, signature_key: str | None = None, batch: int | None = None):
    """The frozen GraphDef (TensorBoard proto) of one signature: its placeholders and outputs
    are named after the signature's input and output keys."""
    from shipyard.formats import tf_freeze

    concrete, graph_def = load_signature(model, signature_key).frozen_graph_def(batch)
    graph_def = tf_freeze.to_tb(graph_def)
    return tf_freeze.name_outputs(graph_def, tf_freeze.output_names(concrete, [])) if concrete is not None else graph_def


def graph_def(model: Model):
    """The GraphDef (with its function library) that op tools read (``formats.registry``: ``graph``)."""
    return serving_meta(model).graph_def
