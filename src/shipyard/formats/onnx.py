"""ONNX: parsed with the ``onnx`` protobuf package only (no onnxruntime, no TensorFlow).

Weights stored as external data are not read: their shapes are in the proto, which is all
that inspection needs, so a multi-GB model inspects in the time it takes to parse the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard import flops as F
from shipyard.errors import ModelFormatError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

# Initializers above this many bytes are stripped from the copy used for shape inference:
# inference needs their dims, not their values (small ones, e.g. Reshape targets, are kept).
_KEEP_FOR_INFERENCE = 4096


def load_proto(path: Path, external_data: bool = False):
    """Parse an ONNX file, turning protobuf failures into a clear :class:`ModelFormatError`."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=external_data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(
            f"{path}: truncated or corrupt ONNX file (the protobuf does not parse: {exc})",
            hint="re-export the model; if it was copied, compare its size with the original",
        ) from exc
    except OSError as exc:
        raise ModelFormatError(f"{path}: external weight data cannot be read ({exc})") from exc
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelFormatError(f"{path}: an ONNX file with no graph nodes (truncated or empty model)")
    check_text(proto, path)
    return proto


def check_text(proto, path) -> None:
    """ONNX is proto2: a string field holding invalid UTF-8 parses as ``bytes``, which breaks
    every reader after it. Refuse the model, naming the first such field."""
    def bad(value) -> bool:
        return not isinstance(value, str)

    def check_graph(graph, where: str) -> None:
        for kind in ("input", "output", "value_info", "initializer"):
            for item in getattr(graph, kind):
                if bad(item.name):
                    raise ModelFormatError(f"{path}: corrupt ONNX file: a {kind} name in {where} is not valid UTF-8 "
                                           f"({item.name[:40]!r})")
        for node in graph.node:
            for field in ("op_type", "domain", "name"):
                if bad(getattr(node, field)):
                    raise ModelFormatError(f"{path}: corrupt ONNX file: a node's {field} in {where} is not valid "
                                           f"UTF-8 ({getattr(node, field)[:40]!r})")
            for name in (*node.input, *node.output):
                if bad(name):
                    raise ModelFormatError(f"{path}: corrupt ONNX file: node '{node.name}' in {where} names a "
                                           f"tensor that is not valid UTF-8 ({name[:40]!r})")
            for attr in node.attribute:
                if bad(attr.name):
                    raise ModelFormatError(f"{path}: corrupt ONNX file: an attribute name of node '{node.name}' is "
                                           "not valid UTF-8")
                if attr.HasField("g"):
                    check_graph(attr.g, f"a subgraph of '{node.name}'")
                for sub in attr.graphs:
                    check_graph(sub, f"a subgraph of '{node.name}'")

    check_graph(proto.graph, "the graph")
    for item in (*proto.opset_import, *proto.metadata_props):
        for field in ("domain", "key", "value", "producer_name"):
            if hasattr(item, field) and bad(getattr(item, field)):
                raise ModelFormatError(f"{path}: corrupt ONNX file: an opset or metadata entry is not valid UTF-8")
    for field in ("producer_name", "producer_version", "domain", "doc_string"):
        if bad(getattr(proto, field)):
            raise ModelFormatError(f"{path}: corrupt ONNX file: the model's {field} is not valid UTF-8")


def load_model_proto(model: Model, external_data: bool = False):
    """The ModelProto of a model file, decrypting in memory when it is encrypted (an encrypted
    model is one file: it has no external data)."""
    data = model.in_memory()
    if data is None:
        return load_proto(model.path, external_data=external_data)
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{model.path}: the decrypted ONNX model does not parse ({exc})") from exc
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelFormatError(f"{model.path}: the decrypted ONNX model has no graph nodes")
    check_text(proto, model.path)
    return proto


def np_dtype_name(elem_type: int) -> str:
    import onnx

    if elem_type == onnx.TensorProto.STRING:
        return "string"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_spec(value_info) -> TensorSpec:
    ttype = value_info.type.tensor_type
    shape = None
    if ttype.HasField("shape"):
        dims = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(-1)
        shape = tuple(dims)
    return TensorSpec(value_info.name, np_dtype_name(ttype.elem_type), shape)


def signature_of(proto) -> Signature:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = tuple(_value_spec(v) for v in proto.graph.input if v.name not in initializers)
    outputs = tuple(_value_spec(v) for v in proto.graph.output)
    return Signature(inputs, outputs)


def signature(model: Model) -> Signature:
    return signature_of(load_model_proto(model))


def _walk_nodes(graph):
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def _tensor_nbytes(tensor) -> tuple[str, int, int]:
    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    dtype = np_dtype_name(tensor.data_type)
    itemsize = np.dtype(dtype).itemsize if dtype not in ("string",) and dtype in np.sctypeDict else 1
    return dtype, count, count * itemsize


def summarize(model: Model) -> Summary:
    proto = load_model_proto(model)
    graph = proto.graph
    param_bytes: dict[str, int] = {}
    params = 0
    tensors = list(graph.initializer)
    for node in _walk_nodes(graph):
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value" and a.HasField("t"))
    for tensor in tensors:
        dtype, count, nbytes = _tensor_nbytes(tensor)
        params += count
        add_param(param_bytes, dtype, nbytes)
    external = sum(
        1 for t in graph.initializer if t.data_location == 1  # TensorProto.EXTERNAL
    )
    tally = count_flops(proto)
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    details = {
        "ir_version": proto.ir_version,
        "opsets": opsets,
        "initializers": len(graph.initializer),
        "external_initializers": external,
        "functions": len(proto.functions),
        "flops_uncounted_ops": tally.uncounted,
    }
    sig = signature_of(proto)
    return Summary(
        format="onnx",
        path=str(model.path),
        size_bytes=_size_with_external(model.path, graph),
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(n.op_type for n in _walk_nodes(graph)),
        params=params,
        param_bytes=param_bytes,
        flops=tally.total,
        flops_by_op=tally.sorted_by_op(),
        producer=" ".join(x for x in (proto.producer_name, proto.producer_version) if x) or None,
        version=f"opset {opsets.get('ai.onnx', '?')}",
        metadata={p.key: p.value for p in proto.metadata_props},
        details=details,
    )


def _size_with_external(path: Path, graph) -> int:
    size = path.stat().st_size
    seen: set[str] = set()
    for t in graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = path.parent / entry.value
                if ext.is_file():
                    size += ext.stat().st_size
    return size


# ---------------------------------------------------------------- FLOPs

_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Relu", "LeakyRelu", "PRelu",
    "Sigmoid", "Tanh", "Clip", "Max", "Min", "Abs", "Neg", "Erf", "Elu", "Selu", "HardSigmoid",
    "HardSwish", "Softplus", "Reciprocal", "Mish", "Gelu", "Sum", "Mean", "Where", "Equal",
    "Greater", "Less", "Not", "And", "Or", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu",
}
_FREE = {
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Identity", "Pad",
    "Gather", "GatherElements", "Slice", "Split", "Shape", "Cast", "Constant", "Expand", "Tile",
    "ConstantOfShape", "Dropout", "DepthToSpace", "SpaceToDepth", "Size", "Range", "NonZero",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
           "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin", "ReduceLogSumExp", "ReduceSumSquare"}


def _shape_table(proto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor onnx's shape inference can reach (symbols count as 1)."""
    import onnx

    light = _copy_without_big_weights(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        inferred = light  # fall back to the shapes the file declares
    table: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        spec = _value_spec(v)
        if spec.shape is not None:
            table[v.name] = spec.concrete_shape(1)
    for t in proto.graph.initializer:
        table[t.name] = tuple(int(d) for d in t.dims)
    return table


def _copy_without_big_weights(proto):
    import onnx

    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g = light.graph
    src = proto.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    for t in src.initializer:
        if t.data_location == 1 or len(t.raw_data) > _KEEP_FOR_INFERENCE or len(t.float_data) > _KEEP_FOR_INFERENCE // 4:
            g.input.add().CopyFrom(_value_info_for(t))
        else:
            g.initializer.add().CopyFrom(t)
    return light


def _value_info_for(tensor):
    import onnx

    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def count_flops(proto) -> F.FlopTally:
    shapes = _shape_table(proto)
    tally = F.FlopTally()
    for node in proto.graph.node:
        tally.add(node.op_type, _node_flops(node, shapes))
    return tally


def flops_by_node(proto) -> dict[str, int | None]:
    """Each named node's FLOPs (None where its shapes are unknown): what keeping it in float costs,
    for the quantization search's float share."""
    shapes = _shape_table(proto)
    return {n.name: _node_flops(n, shapes) for n in proto.graph.node if n.name}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            if a.ints:
                return list(a.ints)
            if a.type == 2:  # INT
                return a.i
            if a.type == 1:  # FLOAT
                return a.f
            if a.type == 3:  # STRING
                return a.s.decode()
    return default


def _node_flops(node, shapes) -> int | None:
    op = node.op_type
    ins = [shapes.get(n) if n else None for n in node.input]
    out = shapes.get(node.output[0]) if node.output else None
    if op in _FREE:
        return 0
    if out is None:
        return None
    if op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        w = ins[3] if op == "QLinearConv" else ins[1]
        if w is None:
            return None
        bias = len(node.input) > (8 if op == "QLinearConv" else 2)
        if op == "ConvTranspose":
            # each input element scatters into a kernel window of every output channel
            return 2 * F.numel(ins[0]) * F.numel(w[1:])
        return F.conv(out, w[2:], w[1], bias)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"):
        a = ins[0]
        if a is None:
            return None
        inner = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return F.matmul(out, inner, bias=(op == "Gemm" and len(node.input) > 2))
    if op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        return F.elementwise(out, 2 if op == "BatchNormalization" else 5)
    if op in ("Softmax", "LogSoftmax"):
        return F.elementwise(out, 5)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return F.pool(out, _attr(node, "kernel_shape", [1]))
    if op in _REDUCE:
        return F.reduce(ins[0]) if ins and ins[0] is not None else None
    if op in _ELEMENTWISE:
        return F.elementwise(out)
    return None
