"""Bias correction: the mean error int8 weights add to a convolution's output, taken back out of its bias.

Rounding a convolution's weights W to int8 adds ΔW·x to each of its outputs. Over real data x has
a mean per channel, so ΔW·E[x] is a constant offset per output channel that nothing downstream
averages out. On PP-OCR's recogniser (a Paddle export: hard-swish activations with large channel
means, convolutions whose outputs are small differences of large sums) rounding one 1x1
convolution's weights per channel — 1.9% of their norm — moved that convolution's output by 64%
and the model's output cosine to 0.78; with the offset subtracted from the bias, 0.9999.

The correction is the empirical one of Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction" (2019), with E[x] measured on the calibration data (NNCF's
FastBiasCorrection is of the same family; NNCF's ONNX backend fails on these graphs, and
onnxruntime's quantizer has none, hence this module). It is applied to the quantized model
onnxruntime wrote, reading the int8 weights it chose, so it is exact for whatever rounding, axis
and scale the quantizer used: the int32 bias of each QLinearConv (QOperator) or the int32 bias
behind a Conv's DequantizeLinear (QDQ) gets round(ΔW·E[x] / bias scale) added.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def conv_input_means(model: Path, feeds: list[dict[str, np.ndarray]], threads: int | None = None
                     ) -> dict[str, np.ndarray]:
    """{Conv node name: the mean of its input per channel over ``feeds``}, for the float
    model's convolutions whose weights are initializers (the ones a quantizer rounds)."""
    import onnx

    from shipyard.model import Model
    from shipyard.runtimes import open_runner

    proto = onnx.load(str(model), load_external_data=False)
    weights = {i.name for i in proto.graph.initializer}
    convs = {n.name: n.input[0] for n in proto.graph.node
             if n.op_type == "Conv" and n.name and len(n.input) > 1 and n.input[1] in weights}
    if not convs or not feeds:
        return {}
    sums: dict[str, np.ndarray] = {}
    with open_runner(Model("onnx", Path(model)), threads=threads, intermediates=True) as runner:
        for feed in feeds:
            got = runner.fetch(feed, list(dict.fromkeys(convs.values())))
            for tensor, value in got.items():
                if value.ndim >= 2:
                    axes = (0, *range(2, value.ndim))  # NC...: per channel
                    mean = value.astype(np.float64).mean(axis=axes)
                    sums[tensor] = sums.get(tensor, 0.0) + mean
    return {node: sums[tensor] / len(feeds) for node, tensor in convs.items() if tensor in sums}


def correct_biases(float_model: Path, quantized: Path, means: dict[str, np.ndarray]) -> int:
    """Add each int8 convolution's mean output error (its weights' rounding times the mean of its
    input) back into its int32 bias, in ``quantized`` (rewritten in place). Returns how many
    convolutions were corrected; convolutions kept in float, or without a bias to correct, are left."""
    import onnx
    from onnx import numpy_helper

    if not means:
        return 0
    float_proto = onnx.load(str(float_model), load_external_data=False)
    float_inits = {i.name: i for i in float_proto.graph.initializer}
    float_convs = {n.name: n for n in float_proto.graph.node if n.name in means}
    proto = onnx.load(str(quantized))
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    nodes = {n.name: n for n in proto.graph.node}
    count = 0
    for name, conv in float_convs.items():
        found = _int8_conv(name, nodes, producer, inits)
        if found is None:
            continue  # kept in float (or a form this does not know): nothing was rounded
        w_q, w_scale, w_zero, bias, bias_scale = found
        w = numpy_helper.to_array(float_inits[conv.input[1]]).astype(np.float64)
        q = numpy_helper.to_array(inits[w_q]).astype(np.float64)
        shape = [-1] + [1] * (q.ndim - 1)
        scale = numpy_helper.to_array(inits[w_scale]).astype(np.float64).reshape(shape if inits[w_scale].dims else [])
        zero = numpy_helper.to_array(inits[w_zero]).astype(np.float64).reshape(shape if inits[w_zero].dims else [])
        if q.shape != w.shape or means[name].size != w.shape[1] * conv_group(conv):
            continue
        offset = mean_error(w - (q - zero) * scale, means[name], conv_group(conv))
        b = numpy_helper.to_array(inits[bias]).astype(np.int64)
        step = np.broadcast_to(bias_scale, offset.shape)
        fixed = b + np.round(offset / np.where(step > 0, step, np.inf)).astype(np.int64)
        inits[bias].CopyFrom(numpy_helper.from_array(np.clip(fixed, -2**31, 2**31 - 1).astype(np.int32), bias))
        count += 1
    if count:
        onnx.save(proto, str(quantized))
    return count


def conv_group(conv) -> int:
    """A Conv node's ``group`` attribute (1 when absent)."""
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def mean_error(delta: np.ndarray, mean_in: np.ndarray, group: int) -> np.ndarray:
    """ΔW·E[x] per output channel of a (grouped) convolution: each output channel sees its
    group's input channels, each weight tap the channel's mean (padding at the borders ignored)."""
    out_channels, per_group = delta.shape[0], delta.shape[1]
    taps = delta.reshape(out_channels, per_group, -1).sum(axis=2)  # O x (I/g)
    group_of = np.arange(out_channels) // max(1, out_channels // group)
    inputs = mean_in.reshape(group, per_group)[group_of]  # O x (I/g): each output's input means
    return (taps * inputs).sum(axis=1)


def _int8_conv(name: str, nodes: dict, producer: dict, inits: dict):
    """(int8 weight, its scale, its zero point, int32 bias, bias scale) of the float Conv ``name``
    in the quantized graph, or None. QOperator: ``name_quant`` is a QLinearConv whose bias scale is
    x_scale * w_scale. QDQ: the Conv keeps its name, its weight and bias come through
    DequantizeLinear nodes."""
    from onnx import numpy_helper

    q = nodes.get(f"{name}_quant")
    if q is not None and q.op_type == "QLinearConv":
        if len(q.input) < 9 or not q.input[8] or not all(i in inits for i in (q.input[1], q.input[3], q.input[4],
                                                                               q.input[5], q.input[8])):
            return None
        x_scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float64)
        w_scale = numpy_helper.to_array(inits[q.input[4]]).astype(np.float64)
        return q.input[3], q.input[4], q.input[5], q.input[8], x_scale * w_scale
    conv = nodes.get(name)
    if conv is None or conv.op_type != "Conv" or len(conv.input) < 3:
        return None
    deq = [producer.get(i) for i in conv.input[1:3]]
    if any(d is None or d.op_type != "DequantizeLinear" or not all(i in inits for i in d.input[:3]) for d in deq):
        return None
    (w_q, w_scale, w_zero), (b_q, b_scale, _) = deq[0].input[:3], deq[1].input[:3]
    return w_q, w_scale, w_zero, b_q, numpy_helper.to_array(inits[b_scale]).astype(np.float64)
