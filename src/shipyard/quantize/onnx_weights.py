"""Weight-only int8 for ONNX: large float initializers stored as int8, cast back to float at load.

onnxruntime's quantizers always quantize activations too (static or dynamic); the
graph_transforms ``quantize_weights`` idea (smaller file, float compute) needs only this
rewrite, so it is done here on the proto: symmetric, per output channel for Conv/Gemm/MatMul
weights (axis 0 for Conv, the last axis for MatMul), per tensor otherwise.

The int8 tensor comes back as ``Mul(Cast(int8 -> float), scale)``, not ``DequantizeLinear``:
onnxruntime keeps a DequantizeLinear of a weight unfolded (for its QDQ fusions), so the
convolution's weight is no longer a constant and loses its prepacked kernel — PP-OCR rec ran
at 0.7-0.9x the float speed that way — while Cast and Mul of initializers are folded when the
session loads: float speed, int8 file. (A per-channel DequantizeLinear also needs opset 13;
Paddle exports are opset 11-12.) OpenVINO reads the same pattern (Convert + Multiply) as its own
compressed weights. With the calibration data's per-channel means, each convolution's bias also
takes back the mean error its rounded weights add (``bias_correction``).
"""
from __future__ import annotations

import numpy as np

from shipyard.errors import UsageError

CAST_SUFFIX = "_int8"  # the int8 initializer of weight W is W_int8, its scale W_scale


def graphs(graph):
    """``graph`` and every subgraph in it (If branches, Loop and Scan bodies), outermost first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == attr.GRAPH else list(attr.graphs)):
                yield from graphs(sub)


def _axis_for(name: str, graph) -> int | None:
    """The output-channel axis of ``name`` where a Conv/ConvTranspose/MatMul/Gemm of ``graph`` uses it as its weight."""
    from shipyard.quantize.bias_correction import conv_group

    for node in graph.node:
        if len(node.input) > 1 and node.input[1] == name:
            if node.op_type == "Conv":
                return 0
            if node.op_type == "ConvTranspose" and conv_group(node) == 1:
                return 1  # (C_in, C_out, kh, kw): its output channels are the second axis
            if node.op_type == "MatMul":
                return -1
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return 0 if trans_b else -1
    return None


def quantize_weights(proto, minimum_size: int = 1024, exclude: set[str] | None = None,
                     means: dict[str, np.ndarray] | None = None) -> int:
    """Rewrite ``proto`` in place, subgraphs included (silero-vad keeps every weight in If branches);
    returns how many initializers were quantized. ``means``: {Conv node: the mean of its input per
    channel} on real data, for bias correction (main-graph convolutions: the runner sees no deeper)."""
    import onnx

    exclude = exclude or set()
    graph_inputs = {i.name for i in proto.graph.input}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 7:
        raise UsageError(f"weight quantization needs opset >= 7 (broadcasting Mul); the model has opset {opset}")
    every = list(graphs(proto.graph))
    taken = {i.name for g in every for i in g.initializer} | {o for g in every for n in g.node for o in n.output}
    count = sum(_quantize_graph(g, minimum_size, exclude | graph_inputs, means or {}, taken) for g in every)
    if not count:
        from shipyard.passes.context import nothing_to_quantize

        largest = max((int(np.prod(i.dims)) for g in every for i in g.initializer
                       if i.data_type == onnx.TensorProto.FLOAT and i.name not in graph_inputs and i.name not in exclude),
                      default=0)
        raise nothing_to_quantize(minimum_size, largest)
    return count


def _quantize_graph(graph, minimum_size: int, exclude: set[str], means: dict[str, np.ndarray], taken: set[str]) -> int:
    """One graph's large float initializers as int8 + Cast + Mul (at the head of its nodes)."""
    import onnx
    from onnx import helper, numpy_helper

    kept, added, rounding = [], [], {}
    for init in graph.initializer:
        value = numpy_helper.to_array(init) if init.data_type == onnx.TensorProto.FLOAT else None
        if value is None or value.size < minimum_size or init.name in exclude:
            kept.append(init)
            continue
        axis = _axis_for(init.name, graph) if value.ndim >= 2 else None
        shape = [1] * value.ndim
        if axis is None:
            scale = np.array(max(float(np.abs(value).max()), 1e-12) / 127.0, np.float32)
        else:
            ax = axis % value.ndim
            reduce = tuple(i for i in range(value.ndim) if i != ax)
            shape[ax] = -1
            scale = (np.maximum(np.abs(value).max(axis=reduce), 1e-12) / 127.0).astype(np.float32).reshape(shape)
        q = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
        rounding[init.name] = value.astype(np.float64) - q.astype(np.float64) * scale
        base = init.name
        q_name, s_name, f_name = (_fresh(f"{base}{suffix}", taken) for suffix in (CAST_SUFFIX, "_scale", "_float"))
        kept.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name)])
        added.append(helper.make_node("Cast", [q_name], [f_name], name=_fresh(f"{base}_cast", taken),
                                      to=onnx.TensorProto.FLOAT))
        added.append(helper.make_node("Mul", [f_name, s_name], [base], name=_fresh(f"{base}_dequantize", taken)))
    if not rounding:
        return 0
    kept.extend(_corrected_biases(graph, kept, rounding, means, taken))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = added + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(rounding)


def weighted_nodes(proto, minimum_size: int = 1024) -> dict[str, str]:
    """{node name: op type} of the named nodes, subgraphs included, reading a float initializer that
    ``quantize_weights`` stores as int8: what the weight-only search may keep in float (excluding a
    node keeps its weights)."""
    import onnx

    graph_inputs = {i.name for i in proto.graph.input}
    out = {}
    for graph in graphs(proto.graph):
        large = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                 and int(np.prod(i.dims)) >= minimum_size and i.name not in graph_inputs}
        out.update({n.name: n.op_type for n in graph.node if n.name and large.intersection(n.input)})
    return out


def int8_weight_casts(graph) -> int:
    """How many int8 initializers ``graph`` (not its subgraphs) casts to float (this module's weight-only form)."""
    import onnx

    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    return sum(n.op_type == "Cast" and bool(n.input) and n.input[0] in int8 for n in graph.node)


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... if the graph has it already."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def _corrected_biases(graph, inits: list, rounding: dict[str, np.ndarray], means: dict[str, np.ndarray],
                      taken: set[str]) -> list:
    """Bias correction for the convolutions whose weights were rounded: each bias plus the mean error
    ΔW·E[x] (a new bias where the convolution had none, or shared its bias). Returns the new initializers."""
    from onnx import numpy_helper

    from shipyard.quantize.bias_correction import conv_group, mean_error

    by_name = {i.name: i for i in inits}
    uses: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    added = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in means or len(node.input) < 2 or node.input[1] not in rounding:
            continue
        delta = rounding[node.input[1]]
        group = conv_group(node)
        if means[node.name].size != delta.shape[1] * group:
            continue
        offset = mean_error(delta, means[node.name], group)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if bias and bias not in by_name:
            continue  # a computed bias: nothing to correct in place
        old = numpy_helper.to_array(by_name[bias]).astype(np.float64) if bias else np.zeros(delta.shape[0])
        fixed = (old + offset).astype(np.float32)
        if bias and uses.get(bias, 0) == 1:
            by_name[bias].CopyFrom(numpy_helper.from_array(fixed, bias))
            continue
        name = _fresh(f"{node.name}_corrected_bias", taken)
        added.append(numpy_helper.from_array(fixed, name))
        if bias:
            node.input[2] = name
        else:
            node.input.append(name)
    return added


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
