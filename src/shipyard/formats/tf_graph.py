"""TensorFlow GraphDef (binary ``.pb``, text ``.pbtxt``, or a ``.meta`` MetaGraphDef).

Parsed with TensorBoard's copy of TF's protos, so ``shipyard inspect frozen.pb`` never
imports TensorFlow. Inputs and outputs are found the way TF's summarize_graph found them:
inputs are Placeholders, outputs are nodes nothing consumes that are not constants,
initialisers, savers or training updates.
"""
from __future__ import annotations

import re
from pathlib import Path

from shipyard import flops as F
from shipyard.formats import tf_protos
from shipyard.formats.tf_shapes import BROADCAST, REDUCE, SAME_SHAPE, ShapeInference
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

INPUT_OPS = {"Placeholder", "PlaceholderV2"}
# Ops that are never a model output: they make no tensor, or exist to train, save or init.
NON_OUTPUT_OPS = {
    "Const", "NoOp", "Placeholder", "PlaceholderV2", "PlaceholderWithDefault",
    "Assign", "AssignAdd", "AssignSub", "AssignVariableOp", "AssignAddVariableOp",
    "AssignSubVariableOp", "VariableV2", "Variable", "VarHandleOp", "VarIsInitializedOp",
    "IsVariableInitialized", "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore",
    "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename", "StringJoin", "ScalarSummary",
    "HistogramSummary", "ImageSummary", "MergeSummary", "TensorSummary", "TensorSummaryV2",
    "WriteSummary", "ReadVariableOp", "Switch", "Merge", "Enter", "Exit", "NextIteration",
    # Shape metadata left dangling by gradient and loss code: never a model's answer.
    "Shape", "ShapeN", "Size", "Rank",
}
_TRAINING_OP = re.compile(r"^(Resource)?(Sparse)?Apply[A-Z]")
_NON_OUTPUT_SCOPE = re.compile(r"^(save(_\d+)?|gradients(_\d+)?|report_uninitialized_variables|init(_\d+)?)(/|$)")
_DTYPE_ATTRS = ("dtype", "T", "DstT", "out_type", "output_type", "Tout", "type")


def load(model: Model):
    """(GraphDef, MetaGraphDef or None) of a graph file."""
    return tf_protos.parse_graph_file(model.path, model.in_memory())


def node_dtype(node) -> str:
    for key in _DTYPE_ATTRS:
        if key in node.attr:
            a = node.attr[key]
            if a.type:
                return tf_protos.dtype_name(a.type)
            if a.list.type:
                return tf_protos.dtype_name(a.list.type[0])
    if node.op == "Const":
        return tf_protos.dtype_name(node.attr["value"].tensor.dtype)
    return "unknown"


def is_output_candidate(node) -> bool:
    return not (
        node.op in NON_OUTPUT_OPS
        or _TRAINING_OP.match(node.op)
        or _NON_OUTPUT_SCOPE.match(node.name)
    )


def detect_io(graph_def) -> tuple[list, list]:
    """(input nodes, output nodes), in graph order."""
    consumed = set()
    for node in graph_def.node:
        for ref in node.input:
            consumed.add(ref.lstrip("^").split(":")[0])
    inputs = [n for n in graph_def.node if n.op in INPUT_OPS]
    outputs = [n for n in graph_def.node if n.name not in consumed and is_output_candidate(n)]
    return inputs, outputs


def signature_of(graph_def, shapes: ShapeInference | None = None) -> Signature:
    shapes = shapes or ShapeInference(graph_def)
    inputs, outputs = detect_io(graph_def)

    def spec(node):
        return TensorSpec(node.name, node_dtype(node), shapes.shapes.get(node.name))

    return Signature(tuple(spec(n) for n in inputs), tuple(spec(n) for n in outputs))


def signature(model: Model) -> Signature:
    graph_def, _ = load(model)
    return signature_of(graph_def)


def graph_params(graph_def) -> tuple[int, int, dict[str, int]]:
    """(constant elements, variable elements, bytes per dtype)."""
    const = variables = 0
    param_bytes: dict[str, int] = {}
    for node in graph_def.node:
        if node.op == "Const":
            t = node.attr["value"].tensor
            shape = tf_protos.shape_of(t.tensor_shape) or ()
            dtype = tf_protos.dtype_name(t.dtype)
        elif node.op in ("VariableV2", "Variable", "VarHandleOp"):
            shape = tf_protos.shape_of(node.attr["shape"].shape) or ()
            dtype = tf_protos.dtype_name(node.attr["dtype"].type)
        else:
            continue
        count = F.numel(shape)
        if node.op == "Const":
            const += count
        else:
            variables += count
        add_param(param_bytes, dtype, count * tf_protos.itemsize(dtype))
    return const, variables, param_bytes


def summarize_graph_def(graph_def, meta, path: Path, fmt: str, size_bytes: int) -> Summary:
    shapes = ShapeInference(graph_def)
    sig = signature_of(graph_def, shapes)
    const, variables, param_bytes = graph_params(graph_def)
    tally = count_flops(graph_def, shapes)
    ops = [n.op for n in graph_def.node]
    for fn in graph_def.library.function:
        ops.extend(n.op for n in fn.node_def)
    control_edges = sum(1 for n in graph_def.node for i in n.input if i.startswith("^"))
    devices = sorted({n.device for n in graph_def.node if n.device})
    details = {
        "nodes": len(graph_def.node),
        "functions": len(graph_def.library.function),
        "const_params": const,
        "variable_params": variables,
        "control_edges": control_edges,
        "devices": devices,
        "flops_uncounted_ops": tally.uncounted,
    }
    metadata: dict[str, str] = {}
    producer = f"GraphDef producer {graph_def.versions.producer}" if graph_def.versions.producer else None
    if meta is not None:
        info = meta.meta_info_def
        if info.tensorflow_version:
            producer = f"TensorFlow {info.tensorflow_version}"
        if info.tags:
            metadata["tags"] = ",".join(info.tags)
        if meta.HasField("saver_def"):
            details["saver"] = {
                "filename_tensor": meta.saver_def.filename_tensor_name,
                "save_op": meta.saver_def.save_tensor_name,
                "restore_op": meta.saver_def.restore_op_name,
            }
        details["collections"] = sorted(meta.collection_def)
    return Summary(
        format=fmt,
        path=str(path),
        size_bytes=size_bytes,
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(ops),
        params=const + variables,
        param_bytes=param_bytes,
        flops=tally.total,
        flops_by_op=tally.sorted_by_op(),
        producer=producer,
        version=f"graph version {graph_def.versions.producer}",
        metadata=metadata,
        details=details,
    )


def summarize(model: Model) -> Summary:
    graph_def, meta = load(model)
    return summarize_graph_def(graph_def, meta, model.path, "tf-graphdef", model.path.stat().st_size)


# ---------------------------------------------------------------- FLOPs

_FREE = {
    "Const", "Identity", "IdentityN", "Placeholder", "PlaceholderWithDefault", "Reshape", "Pad",
    "PadV2", "MirrorPad", "ConcatV2", "Transpose", "Squeeze", "ExpandDims", "Shape", "StridedSlice",
    "Pack", "Unpack", "Cast", "NoOp", "ReadVariableOp", "VarHandleOp", "VariableV2", "GatherV2",
    "Slice", "Split", "SplitV", "Fill", "StopGradient", "Snapshot", "Tile", "Range", "Size",
}
_NOT_ELEMENTWISE = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "Softmax", "LogSoftmax",
                    "BatchNormWithGlobalNormalization"}


def count_flops(graph_def, shapes: ShapeInference) -> F.FlopTally:
    tally = F.FlopTally()
    for node in graph_def.node:
        tally.add(node.op, _node_flops(node, shapes))
    return tally


def _node_flops(node, shapes: ShapeInference) -> int | None:
    op = node.op
    if op in _FREE or op in NON_OUTPUT_OPS:
        return 0
    out = shapes.shapes.get(node.name)
    ins = [shapes.shape(i) for i in node.input if not i.startswith("^")]
    if out is None or any(s is None for s in ins[:2]):
        return None
    if op == "Conv2D":
        return F.conv(out, ins[1][:2], ins[1][2])
    if op == "DepthwiseConv2dNative":
        return F.depthwise(out, ins[1][:2])
    if op in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = ins[0]
        transposed = node.attr["transpose_a"].b or node.attr["adj_x"].b
        return F.matmul(out, a[-2] if transposed else a[-1])
    if op.startswith("FusedBatchNorm") or op == "BatchNormWithGlobalNormalization":
        return F.elementwise(out, 2)
    if op in ("Softmax", "LogSoftmax"):
        return F.elementwise(out, 5)
    if op in ("MaxPool", "AvgPool"):
        ksize = list(node.attr["ksize"].list.i)
        return F.pool(out, [k for k in ksize if k > 1] or [1])
    if op in REDUCE:
        return F.reduce(ins[0])
    if op in BROADCAST or (op in SAME_SHAPE and op not in _NOT_ELEMENTWISE):
        return F.elementwise(out)
    return None


def graph_def(model: Model):
    """The GraphDef (with its function library) that op tools read (``formats.registry``: ``graph``)."""
    return load(model)[0]
