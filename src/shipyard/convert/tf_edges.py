"""Conversion edges whose source is a TensorFlow format (GraphDef, SavedModel, Keras, TFLite).

Every TensorFlow source reaches TFLite, TF.js and SavedModel through its frozen GraphDef,
so the target-specific fixes (TFLite's scalar and bool inputs) live in one place.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from shipyard.atomic import atomic_path
from shipyard.convert.options import ConvertOptions
from shipyard.deps import all_output_silenced, require
from shipyard.errors import ConversionError, UnsupportedError, UsageError, engine_message
from shipyard.formats import tf_graph
from shipyard.model import Model, tensor_name

# ---------------------------------------------------------------- to a frozen GraphDef


def frozen_graph_of(src: Model, opts: ConvertOptions):
    """The frozen GraphDef (TensorBoard proto) of any TensorFlow source, in memory, through the
    function the format registry names for the source's format (``frozen``)."""
    from shipyard.formats import capability

    freeze = capability(src.format, "frozen")
    if freeze is None:
        raise UsageError(f"{src.format} is not a TensorFlow graph format")
    return freeze(src, opts)


def frozen_from_graphdef(src: Model, opts: ConvertOptions):
    """A GraphDef is frozen already: only pruned to ``--outputs`` when they are given."""
    from shipyard.formats.tf_freeze import prune_for_inference

    graph_def, _ = tf_graph.load(src)
    return prune_for_inference(graph_def, opts.outputs) if opts.outputs else graph_def


def frozen_from_keras(src: Model, opts: ConvertOptions):
    from shipyard.formats import keras

    return keras.frozen_graph_def(src)


def frozen_from_savedmodel(src: Model, opts: ConvertOptions):
    from shipyard.formats import tf_saved

    # Recorded for the rest of the chain: a TFLite target carries the signature under its key.
    opts.signature_key = tf_saved.pick_signature_key(tf_saved.serving_meta(src), opts.signature_key)
    return tf_saved.frozen_graph_def(src, opts.signature_key)


def frozen_from_checkpoint(src: Model, opts: ConvertOptions):
    from shipyard.convert import freeze

    return freeze.freeze_checkpoint(src, opts.outputs)


def to_graphdef(src: Model, out: Path, opts: ConvertOptions) -> Model:
    graph_def = frozen_graph_of(src, opts)
    with atomic_path(out) as tmp:
        tmp.write_bytes(graph_def.SerializeToString())
    return Model("tf-graphdef", out)


# ---------------------------------------------------------------- GraphDef -> ONNX


def graphdef_to_onnx(src: Model, out: Path, opts: ConvertOptions) -> Model:
    tf = require("tensorflow", "Converting to ONNX")
    tf2onnx = require("tf2onnx", "Converting to ONNX")
    graph_def, _ = tf_graph.load(src)
    sig = tf_graph.signature_of(graph_def)
    outputs = output_names(graph_def, opts)
    tf_gd = tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString())
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto, _ = tf2onnx.convert.from_graph_def(
                tf_gd, input_names=[_tf_name(s.name) for s in sig.inputs],
                output_names=[_tf_name(o) for o in outputs], opset=opts.opset,
            )
    except (ValueError, KeyError, RuntimeError, tf.errors.OpError) as exc:
        raise ConversionError(f"tf2onnx could not convert {src.path}: {engine_message(exc)}") from exc
    missing = _non_onnx_ops(proto)
    if missing:
        listing = "; ".join(f"{op} (nodes: {', '.join(nodes[:3])})" for op, nodes in missing.items())
        raise UnsupportedError(f"ONNX has no operator for: {listing}", hint="replace these ops in the model, or keep it in TensorFlow/TFLite")
    with atomic_path(out) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return Model("onnx", out)


def _non_onnx_ops(proto) -> dict[str, list[str]]:
    """Nodes tf2onnx left as raw TensorFlow ops (it does not fail on them, onnxruntime would)."""
    import onnx

    domains = {o.domain for o in proto.opset_import}
    missing: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            missing.setdefault(node.op_type, []).append(node.name)
        elif node.domain not in domains | {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}:
            missing.setdefault(f"{node.domain}.{node.op_type}", []).append(node.name)
    return missing


def output_names(graph_def, opts: ConvertOptions) -> list[str]:
    """The requested outputs (checked, with suggestions for typos) or the detected ones."""
    from shipyard.formats.tf_freeze import check_outputs

    if opts.outputs:
        check_outputs(graph_def, opts.outputs)
        return list(opts.outputs)
    return [s.name for s in tf_graph.signature_of(graph_def).outputs]


def _tf_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


# ---------------------------------------------------------------- GraphDef -> TFLite


def _serving_function(tf, graph_def, outputs: list[str], opts: ConvertOptions):
    """A tf.function over the frozen graph, with TFLite's input limits fixed and reported."""
    sig = tf_graph.signature_of(graph_def)
    fetch_names = outputs
    tf_gd = tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(tf_gd, name=""), [])
    g = wrapped.graph
    pruned = wrapped.prune(
        feeds=[g.get_tensor_by_name(_tf_name(s.name)) for s in sig.inputs],
        fetches=[g.get_tensor_by_name(_tf_name(o)) for o in fetch_names],
    )
    specs, fixes = [], []
    for s in sig.inputs:
        shape = [None if (not isinstance(d, int) or d < 0) else d for d in (s.shape or [])]
        dtype = tf.as_dtype(s.dtype)
        fix = []
        if s.shape is not None and len(s.shape) == 0:
            shape, fix = [1], fix + ["reshape"]
            opts.note(f"TFLite input '{s.name}': a scalar became shape [1] (TFLite has no scalar inputs)")
        if dtype == tf.bool:
            dtype, fix = tf.int32, fix + ["cast"]
            opts.note(f"TFLite input '{s.name}': bool became int32, cast back to bool inside the model")
        specs.append(tf.TensorSpec(shape, dtype, name=_safe_name(s.name)))
        fixes.append(fix)
    out_names = [_safe_name(o) for o in fetch_names]

    @tf.function(input_signature=specs)
    def serve(*args):
        xs = []
        for x, fix in zip(args, fixes):
            if "reshape" in fix:
                x = tf.reshape(x, [])
            if "cast" in fix:
                x = tf.cast(x, tf.bool)
            xs.append(x)
        result = pruned(*xs)
        result = result if isinstance(result, (list, tuple)) else [result]
        # Each output its own op: the TFLite converter then writes the signature (it falls back
        # to its deprecated path, without one, when an output is the pruned call itself).
        return {name: tf.identity(r) for name, r in zip(out_names, result)}

    return serve.get_concrete_function()


def _safe_name(name: str) -> str:
    """A tensor name as a tf.function argument or output key (TF allows fewer characters)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", tensor_name(name))


_TF_OP = re.compile(r"\btf\.([A-Z][A-Za-z0-9_]*)")
_LOC = re.compile(r'loc\((?:callsite\()?"([^"]+)"')


def tflite_converter(src: Model, opts: ConvertOptions):
    """A TFLiteConverter over a frozen GraphDef (what ``convert`` and ``quantize`` start from)."""
    tf = require("tensorflow", "Converting to TFLite")
    graph_def, _ = tf_graph.load(src)
    outputs = output_names(graph_def, opts)
    concrete = _serving_function(tf, graph_def, outputs, opts)
    owner = tf.Module()  # with it, the converter writes a signature (and takes the non-deprecated path)
    owner.serve = concrete
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], owner)


def graphdef_to_tflite(src: Model, out: Path, opts: ConvertOptions) -> Model:
    tf = require("tensorflow", "Converting to TFLite")
    graph_def, _ = tf_graph.load(src)
    outputs = output_names(graph_def, opts)
    converter = tflite_converter(src, opts)
    if opts.allow_tf_ops:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        opts.note("select TF ops allowed: the model needs a LiteRT build with the Flex delegate")
    try:
        # MLIR dumps the failing ops from C++ straight to the descriptors; the exception says it too.
        with all_output_silenced():
            flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError (not importable portably) and others
        text = str(exc)
        ops = sorted(set(_TF_OP.findall(text)) - {"function"})
        if ops:
            nodes = sorted(set(_LOC.findall(text)))[:6]
            where = f" (nodes: {', '.join(nodes)})" if nodes else ""
            if opts.allow_tf_ops or not _converts_with_tf_ops(tf, converter):  # not even in the Flex allowlist
                raise UnsupportedError(
                    f"TFLite has neither a builtin kernel nor a select TensorFlow op for: {', '.join(ops)}{where}",
                    hint="replace the op in the model, or implement it as a TFLite custom op",
                ) from exc
            raise UnsupportedError(
                f"TFLite has no builtin kernel for: {', '.join(ops)}{where}",
                hint="re-run with --allow-tf-ops to use select TensorFlow ops (needs the Flex delegate at run time)",
            ) from exc
        raise ConversionError(f"the TFLite converter failed: {engine_message(exc)}") from exc
    inputs = [s.name for s in tf_graph.signature_of(graph_def).inputs]
    flatbuffer = keep_tflite_names(flatbuffer, opts.signature_key or DEFAULT_SIGNATURE, inputs, outputs)
    with atomic_path(out) as tmp:
        tmp.write_bytes(flatbuffer)
    return Model("tflite", out)


DEFAULT_SIGNATURE = "serving_default"


def keep_tflite_names(flatbuffer: bytes, key: str, inputs: list[str], outputs: list[str]) -> bytes:
    """Give a converted TFLite model the source's names: its input and output tensors are named
    as in the source graph (what TF's own frozen-graph converter does; C++ and Android code
    look them up by name), and its signature def is ``key`` with those names.

    The converter names a function's tensors ``serving_default_x:0`` / ``PartitionedCall:0`` and
    writes the signature with the function's (sanitized) argument and output names; those are
    matched back to the source's names here. Without a signature from the converter, the
    model's inputs are in argument order and its outputs in sorted-key order.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    if len(model.subgraphs) != 1 or any((b.offset or 0) > 1 for b in model.buffers or []):
        return flatbuffer  # several subgraphs, or weights stored after the flatbuffer: left as converted
    sub = model.subgraphs[0]
    in_pairs = [(_safe_name(n), tensor_name(n)) for n in inputs]
    out_pairs = [(_safe_name(n), tensor_name(n)) for n in outputs]
    if model.signatureDefs:
        sig = model.signatureDefs[0]
        in_index = {_text(m.name): m.tensorIndex for m in sig.inputs or []}
        out_index = {_text(m.name): m.tensorIndex for m in sig.outputs or []}
    else:
        sig = schema.SignatureDefT()
        sig.subgraphIndex = 0
        model.signatureDefs = [sig]
        in_index = dict(zip([a for a, _ in in_pairs], list(sub.inputs)))
        out_index = dict(zip(sorted(a for a, _ in out_pairs), list(sub.outputs)))
    if {a for a, _ in in_pairs} != set(in_index) or {a for a, _ in out_pairs} != set(out_index):
        return flatbuffer  # the converter pruned or renamed something unexpected: keep its own names

    def tensor_map(pairs, index):
        maps = []
        for converted, source in pairs:
            m = schema.TensorMapT()
            m.name, m.tensorIndex = source, index[converted]
            sub.tensors[m.tensorIndex].name = source
            maps.append(m)
        return maps

    sig.signatureKey = key
    sig.inputs = tensor_map(in_pairs, in_index)
    sig.outputs = tensor_map(out_pairs, out_index)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _converts_with_tf_ops(tf, converter) -> bool:
    """Whether select TensorFlow ops would rescue the conversion (so the hint can say so)."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        with all_output_silenced():
            converter.convert()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no"
        return False


# ---------------------------------------------------------------- GraphDef -> TF.js, SavedModel


def graphdef_to_tfjs(src: Model, out: Path, opts: ConvertOptions) -> Model:
    from shipyard.convert.tfjs_writer import write_graph_model
    from shipyard.formats.tf_freeze import prune_for_inference

    graph_def, _ = tf_graph.load(src)
    write_graph_model(prune_for_inference(graph_def, output_names(graph_def, opts)), out)
    return Model("tfjs", out)


def graphdef_to_savedmodel(src: Model, out: Path, opts: ConvertOptions) -> Model:
    tf = require("tensorflow", "Writing a SavedModel")
    graph_def, _ = tf_graph.load(src)
    concrete = _serving_function(tf, graph_def, output_names(graph_def, opts), ConvertOptions())
    module = tf.Module()
    module.serve = concrete
    with atomic_path(out, directory=True) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": concrete})
    return Model("tf-savedmodel", out)


def keras_to_savedmodel(src: Model, out: Path, opts: ConvertOptions) -> Model:
    from shipyard.formats import keras as keras_format

    model = keras_format.load(src)
    with atomic_path(out, directory=True) as tmp, contextlib.redirect_stdout(io.StringIO()):
        model.export(str(tmp), verbose=False)
    return Model("tf-savedmodel", out)


def keras_to_keras(src: Model, out: Path, opts: ConvertOptions) -> Model:
    from shipyard.formats import keras as keras_format

    if out.suffix != ".keras":
        raise UsageError(f"{out}: a Keras v3 model file must end in .keras (Keras refuses other names)")
    model = keras_format.load(src)
    with atomic_path(out) as tmp:
        target = tmp.with_suffix(".keras")
        model.save(target)
        target.replace(tmp)
    return Model("keras", out)


# ---------------------------------------------------------------- TFLite -> ONNX


def tflite_to_onnx(src: Model, out: Path, opts: ConvertOptions) -> Model:
    tf2onnx = require("tf2onnx", "Converting TFLite to ONNX")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto, _ = tf2onnx.convert.from_tflite(str(src.path), opset=opts.opset)
    except (ValueError, KeyError, RuntimeError, AssertionError) as exc:
        raise ConversionError(f"tf2onnx could not convert {src.path}: {engine_message(exc)}") from exc
    missing = _non_onnx_ops(proto)
    if missing:
        raise UnsupportedError("ONNX has no operator for: " + ", ".join(missing))
    with atomic_path(out) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return Model("onnx", out)


# ---------------------------------------------------------------- GraphDef -> TF memmapped


def graphdef_to_memmapped(src: Model, out: Path, opts: ConvertOptions) -> Model:
    """TF's memory-mapped graph format (``convert_graphdef_memmapped_format``), written by shipyard."""
    from shipyard.convert.memmapped_writer import memmapped_bytes
    from shipyard.formats.tf_freeze import prune_for_inference

    graph_def, _ = tf_graph.load(src)
    if opts.outputs:
        graph_def = prune_for_inference(graph_def, output_names(graph_def, opts))
    data, converted = memmapped_bytes(graph_def, opts.memmap_min_bytes)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    opts.note(f"{converted} constants memory-mapped as ImmutableConst regions "
              f"(those of at least {opts.memmap_min_bytes} bytes); load it with tensorflow::MemmappedEnv")
    return Model("tf-memmapped", out)
