"""Weight-only int8 for ONNX: large float initializers stored as int8 + ``DequantizeLinear``.

onnxruntime's quantizers always quantize activations too (static or dynamic); the
graph_transforms ``quantize_weights`` idea (smaller file, float compute) needs only this
rewrite, so it is done here on the proto: symmetric, per output channel for Conv/Gemm/MatMul
weights (axis 0 for Conv, the last axis for MatMul), per tensor otherwise.
"""
from __future__ import annotations

import numpy as np

from shipyard.errors import UsageError


def _axis_for(name: str, proto) -> int | None:
    for node in proto.graph.node:
        if len(node.input) > 1 and node.input[1] == name:
            if node.op_type == "Conv":
                return 0
            if node.op_type == "MatMul":
                return -1
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return 0 if trans_b else -1
    return None


def quantize_weights(proto, minimum_size: int = 1024, exclude: set[str] | None = None) -> int:
    """Rewrite ``proto`` in place; returns how many initializers were quantized."""
    import onnx
    from onnx import helper, numpy_helper

    exclude = exclude or set()
    graph_inputs = {i.name for i in proto.graph.input}
    kept, added, count = [], [], 0
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        if value is None or value.size < minimum_size or init.name in graph_inputs or init.name in exclude:
            kept.append(init)
            continue
        axis = _axis_for(init.name, proto) if opset >= 13 and value.ndim >= 2 else None
        if axis is None:
            scale = np.array(max(float(np.abs(value).max()), 1e-12) / 127.0, np.float32)
            q = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
            zero = np.array(0, np.int8)
        else:
            ax = axis % value.ndim
            reduce = tuple(i for i in range(value.ndim) if i != ax)
            scale = (np.maximum(np.abs(value).max(axis=reduce), 1e-12) / 127.0).astype(np.float32)
            shape = [1] * value.ndim
            shape[ax] = -1
            q = np.clip(np.round(value / scale.reshape(shape)), -127, 127).astype(np.int8)
            zero = np.zeros(scale.shape, np.int8)
        base = init.name
        kept.extend([numpy_helper.from_array(q, f"{base}_quantized"), numpy_helper.from_array(scale, f"{base}_scale"),
                     numpy_helper.from_array(zero, f"{base}_zero_point")])
        attrs = {"axis": axis % value.ndim} if axis is not None else {}
        added.append(helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                      [base], name=f"{base}_dequantize", **attrs))
        count += 1
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    nodes = added + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if not count:
        from shipyard.passes.context import nothing_to_quantize

        largest = max((int(np.prod(i.dims)) for i in kept if i.data_type == onnx.TensorProto.FLOAT
                       and i.name not in graph_inputs and i.name not in exclude), default=0)
        raise nothing_to_quantize(minimum_size, largest)
    if opset < 10:
        raise UsageError(f"weight quantization needs opset >= 10 (DequantizeLinear); the model has opset {opset}")
    return count


def quantize_weights_transform(params, ctx):
    """The ``quantize_weights(minimum_size=N)`` transform for ONNX, as a pass over the protobuf
    (Constant nodes are lifted first)."""
    from shipyard.passes.onnx_passes import ProtoPass, lift_constants_proto

    minimum_size = params.int("minimum_size", 1024)

    def rewrite(proto):
        proto = lift_constants_proto(proto)
        n = quantize_weights(proto, minimum_size)
        ctx.notes.append(f"quantize_weights: {n} initializers stored as int8")
        return proto

    return ProtoPass(rewrite)
