"""GraphDef transforms with the names and behaviour of TF's graph_transforms tool.

TF 2.x no longer ships that tool, so the simple rewrites (rewiring, sorting, deduplicating,
renaming, weight rounding) are written here on the GraphDef protobuf, without importing
TensorFlow. Where TF still has the machinery, it is used: constant folding is Grappler's
``constfold`` optimizer, ``remove_training_nodes`` is ``tf.compat.v1.graph_util``'s.
"""
from __future__ import annotations

import hashlib
from collections import deque

import numpy as np

from shipyard.errors import UnsupportedError, UsageError, engine_message
from shipyard.formats import tf_protos
from shipyard.passes.context import Context, nothing_to_quantize
from shipyard.passes.registry import Params

# DataType enum values (tensorflow/core/framework/types.proto)
DT_FLOAT, DT_QUINT8 = 1, 12
_TYPE_NAMES = {"float": 1, "float32": 1, "double": 2, "float64": 2, "int32": 3, "uint8": 4, "int16": 5,
               "int8": 6, "string": 7, "int64": 9, "bool": 10, "float16": 19, "half": 19}
# Ops whose result differs between two identical-looking nodes (never merged).
_STATEFUL = {"Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "VariableV2", "Variable", "VarHandleOp",
             "RandomUniform", "RandomStandardNormal", "TruncatedNormal", "RandomUniformInt", "Assign", "NoOp"}


def node_of(ref: str) -> str:
    """Node name of an input reference: ``^a`` / ``a:1`` / ``a`` -> ``a``."""
    return ref.lstrip("^").split(":")[0]


def _rewire(graph_def, mapping: dict[str, str]) -> None:
    """Point every reference to a node in ``mapping`` at its replacement reference."""
    for node in graph_def.node:
        new_inputs: list[str] = []
        for ref in node.input:
            control = ref.startswith("^")
            name = node_of(ref)
            seen = set()
            while name in mapping and name not in seen:  # follow chains of removed nodes
                seen.add(name)
                target = mapping[name]
                ref = ("^" + node_of(target)) if control else target
                name = node_of(target)
            if control and ref in new_inputs:
                continue
            new_inputs.append(ref)
        # control inputs must come last in a NodeDef
        del node.input[:]
        node.input.extend([r for r in new_inputs if not r.startswith("^")] + [r for r in new_inputs if r.startswith("^")])


def _keep(graph_def, names: set[str]) -> None:
    kept = [n for n in graph_def.node if n.name in names]
    del graph_def.node[:]
    graph_def.node.extend(kept)


def strip_unused_nodes(graph_def, params: Params, ctx: Context):
    """Keep the nodes the outputs depend on; inputs become Placeholders (typed/shaped if asked)."""
    by_name = {n.name: n for n in graph_def.node}
    for name in ctx.inputs + ctx.outputs:
        if name not in by_name:
            raise UsageError(f"strip_unused_nodes: no node named '{name}' in the graph")
    dtype_param = params.str("type")
    if dtype_param is not None and dtype_param.lower() not in _TYPE_NAMES:
        raise params.bad("type", dtype_param, "one of " + ", ".join(_TYPE_NAMES))
    shape = params.shape("shape")
    only = set(params.strs("name")) or set(ctx.inputs)
    inputs = set(ctx.inputs)
    keep: set[str] = set()
    queue = deque(ctx.outputs)
    while queue:
        name = queue.popleft()
        if name in keep:
            continue
        keep.add(name)
        if name in inputs:
            continue  # an input cuts the graph here
        queue.extend(node_of(r) for r in by_name[name].input)
    _keep(graph_def, keep)
    for node in graph_def.node:
        if node.name not in inputs:
            continue
        if node.op not in ("Placeholder", "PlaceholderV2"):
            old_type = tf_protos.dtype_name(node.attr["T"].type) if "T" in node.attr else "float32"
            node.op = "Placeholder"
            del node.input[:]
            kept = {"dtype": _TYPE_NAMES.get(old_type, DT_FLOAT)}
            node.ClearField("attr")
            node.attr["dtype"].type = kept["dtype"]
        if node.name in only:
            if dtype_param is not None:
                node.attr["dtype"].type = _TYPE_NAMES[dtype_param.lower()]
            if shape is not None:
                node.attr["shape"].shape.Clear()
                for d in shape:
                    node.attr["shape"].shape.dim.add().size = d
    return graph_def


def remove_nodes(graph_def, params: Params, ctx: Context, ops: set[str] | None = None):
    """Remove nodes of the given ops that pass one data input through; consumers get that input."""
    ops = ops if ops is not None else set(params.strs("op"))
    if not ops:
        raise UsageError("remove_nodes needs at least one op=OPTYPE parameter")
    protected = set(ctx.inputs) | set(ctx.outputs)
    mapping: dict[str, str] = {}
    extra_control: dict[str, list[str]] = {}
    for node in graph_def.node:
        data = [r for r in node.input if not r.startswith("^")]
        if node.op in ops and len(data) == 1 and node.name not in protected:
            mapping[node.name] = data[0]
            extra_control[node.name] = [r for r in node.input if r.startswith("^")]
    if not mapping:
        return graph_def
    for node in graph_def.node:  # a consumer keeps the control dependencies of what it skips over
        if node.name in mapping:
            continue
        for ref in list(node.input):
            for ctrl in extra_control.get(node_of(ref), []):
                if node_of(ctrl) not in mapping and ctrl not in node.input:
                    node.input.append(ctrl)
    _rewire(graph_def, mapping)
    _keep(graph_def, {n.name for n in graph_def.node} - set(mapping))
    _drop_dangling_controls(graph_def)
    return graph_def


def _drop_dangling_controls(graph_def) -> None:
    names = {n.name for n in graph_def.node}
    for node in graph_def.node:
        refs = [r for r in node.input if not (r.startswith("^") and node_of(r) not in names)]
        if len(refs) != len(node.input):
            del node.input[:]
            node.input.extend(refs)


def remove_training_nodes(graph_def, params: Params, ctx: Context):
    """TF's own ``graph_util.remove_training_nodes`` (Identity, CheckNumerics, StopGradient)."""
    from shipyard.deps import require

    tf = require("tensorflow", "remove_training_nodes")
    tf_gd = tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString())
    out = tf.compat.v1.graph_util.remove_training_nodes(tf_gd, protected_nodes=ctx.outputs + ctx.inputs)
    return tf_protos.GraphDef.FromString(out.SerializeToString())


def remove_device(graph_def, params: Params, ctx: Context):
    for node in graph_def.node:
        node.device = ""
    return graph_def


def sort_by_execution_order(graph_def, params: Params, ctx: Context):
    """Kahn's algorithm, stable with respect to the original order."""
    nodes = list(graph_def.node)
    index = {n.name: i for i, n in enumerate(nodes)}
    deps = [{index[node_of(r)] for r in n.input if node_of(r) in index} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    pending = [len(ds) for ds in deps]
    import heapq

    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise UnsupportedError("sort_by_execution_order: the graph has a cycle (a TF1 while loop?)")
    copies = [type(nodes[0])() for _ in order]
    for c, i in zip(copies, order):
        c.CopyFrom(nodes[i])
    del graph_def.node[:]
    graph_def.node.extend(copies)
    return graph_def


def merge_duplicate_nodes(graph_def, params: Params, ctx: Context):
    """Nodes with the same op, inputs, attributes and device compute the same value: keep one."""
    protected = set(ctx.inputs) | set(ctx.outputs)
    while True:
        seen: dict[str, str] = {}
        mapping: dict[str, str] = {}
        for node in graph_def.node:
            if node.op in _STATEFUL or node.name in protected:
                continue
            h = hashlib.sha1(node.op.encode() + node.device.encode())
            for ref in node.input:
                h.update(ref.encode() + b"\0")
            for key in sorted(node.attr):
                h.update(key.encode() + node.attr[key].SerializeToString(deterministic=True))
            digest = h.hexdigest()
            if digest in seen:
                mapping[node.name] = seen[digest]
            else:
                seen[digest] = node.name
        if not mapping:
            return graph_def
        # outputs of a merged node map index-for-index onto the kept one
        _rewire_all_outputs(graph_def, mapping)
        _keep(graph_def, {n.name for n in graph_def.node} - set(mapping))


def _rewire_all_outputs(graph_def, mapping: dict[str, str]) -> None:
    for node in graph_def.node:
        refs = []
        for ref in node.input:
            name = node_of(ref)
            if name in mapping:
                ref = ref.replace(name, mapping[name], 1)
            if ref.startswith("^") and ref in refs:
                continue
            refs.append(ref)
        del node.input[:]
        node.input.extend(refs)


def _float_consts(graph_def, minimum_size: int = 1):
    for node in graph_def.node:
        if node.op == "Const" and node.attr["value"].tensor.dtype == DT_FLOAT:
            value = tf_protos.tensor_to_numpy(node.attr["value"].tensor)
            if value is not None and value.size >= minimum_size:
                yield node, value


def _set_tensor(node, value: np.ndarray, dtype_enum: int = DT_FLOAT) -> None:
    tensor = node.attr["value"].tensor
    tensor.Clear()
    tensor.dtype = dtype_enum
    for d in value.shape:
        tensor.tensor_shape.dim.add().size = int(d)
    tensor.tensor_content = np.ascontiguousarray(value).tobytes()
    node.attr["dtype"].type = dtype_enum


def round_weights(graph_def, params: Params, ctx: Context):
    """Snap each float constant onto ``num_steps`` evenly spaced values between its min and max."""
    steps = params.int("num_steps", 256, minimum=2)
    for node, value in _float_consts(graph_def, minimum_size=2):
        lo, hi = float(value.min()), float(value.max())
        if hi > lo:
            step = (hi - lo) / (steps - 1)
            _set_tensor(node, (np.round((value - lo) / step) * step + lo).astype(np.float32))
    return graph_def


def quantize_weights(graph_def, params: Params, ctx: Context):
    """Float constants of ``minimum_size`` elements or more become quint8 + ``Dequantize`` (MIN_FIRST).

    The Dequantize node takes the constant's name, so consumers are unchanged.
    """
    minimum = params.int("minimum_size", 1024)
    added = []
    chosen = list(_float_consts(graph_def, minimum))
    if not chosen:
        raise nothing_to_quantize(minimum, max((v.size for _, v in _float_consts(graph_def)), default=0))
    for node, value in chosen:
        lo, hi = float(value.min()), float(value.max())
        if hi <= lo:
            hi = lo + 1.0
        q = np.clip(np.round((value - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
        name = node.name
        for suffix, arr, enum in (("quantized_const", q, DT_QUINT8), ("quantized_min", np.float32(lo), DT_FLOAT),
                                  ("quantized_max", np.float32(hi), DT_FLOAT)):
            c = graph_def.node.add()
            c.name, c.op, c.device = f"{name}_{suffix}", "Const", node.device
            _set_tensor(c, np.asarray(arr), enum)
            added.append(c.name)
        node.op = "Dequantize"
        node.ClearField("attr")
        node.attr["T"].type = DT_QUINT8
        node.attr["mode"].s = b"MIN_FIRST"
        del node.input[:]
        node.input.extend([f"{name}_quantized_const", f"{name}_quantized_min", f"{name}_quantized_max"])
    if added:
        ctx.notes.append(f"quantize_weights: {len(added) // 3} constants stored as 8 bits")
    return graph_def


def obfuscate_names(graph_def, params: Params, ctx: Context):
    """Short meaningless names for every node but the inputs and outputs."""
    protected = set(ctx.inputs) | set(ctx.outputs)
    taken = set(protected)
    mapping: dict[str, str] = {}
    counter = 0
    for node in graph_def.node:
        if node.name in protected:
            continue
        while True:
            new = _base36(counter)
            counter += 1
            if new not in taken:
                break
        taken.add(new)
        mapping[node.name] = new
    for node in graph_def.node:
        node.name = mapping.get(node.name, node.name)
        refs = []
        for ref in node.input:
            name = node_of(ref)
            if name in mapping:
                ref = ref.replace(name, mapping[name], 1)
            refs.append(ref)
        del node.input[:]
        node.input.extend(refs)
    return graph_def


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def rename_op(graph_def, params: Params, ctx: Context):
    old, new = params.str("old_op_name"), params.str("new_op_name")
    if not old or not new:
        raise UsageError("rename_op needs old_op_name=OP and new_op_name=OP")
    for node in graph_def.node:
        if node.op == old:
            node.op = new
    return graph_def


def fold_constants(graph_def, params: Params, ctx: Context):
    """Grappler's constant-folding optimizer (TF's own), keeping the inputs and outputs."""
    from shipyard.deps import require

    tf = require("tensorflow", "fold_constants")
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    ignore_errors = params.bool("ignore_errors", False)
    tf_gd = tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString())
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.import_graph_def(tf_gd, name="")
    except (ValueError, tf.errors.OpError) as exc:
        raise UnsupportedError(f"fold_constants: TensorFlow cannot import the graph: {engine_message(exc)}") from exc
    meta = tf.compat.v1.train.export_meta_graph(graph_def=tf_gd, graph=graph)
    fetch = meta.collection_def["train_op"]
    fetch.node_list.value.extend(ctx.outputs)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(["constfold"])
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rewrite.min_graph_nodes = -1
    rewrite.fail_on_optimizer_errors = not ignore_errors
    try:
        optimized = tf_optimizer.OptimizeGraph(config, meta)
    except Exception as exc:  # grappler raises a bare errors.* or RuntimeError
        if ignore_errors:
            ctx.notes.append(f"fold_constants: skipped ({engine_message(exc, max_lines=1, max_chars=160)})")
            return graph_def
        raise UnsupportedError(f"fold_constants failed: {engine_message(exc)}",
                               hint="use fold_constants(ignore_errors=true) to keep going") from exc
    out = tf_protos.GraphDef.FromString(optimized.SerializeToString())
    _restore_io_nodes(out, graph_def, ctx)
    return out


def _restore_io_nodes(out, original, ctx: Context) -> None:
    """Grappler may fold an output into a Const of the same name, but never drops it; check anyway."""
    names = {n.name for n in out.node}
    missing = [n for n in ctx.outputs if n not in names]
    if missing:
        raise UnsupportedError(f"fold_constants removed output node(s) {', '.join(missing)}")
