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
onnxruntime's quantizer has none, hence this module). Weight-only int8 (``onnx_weights``) applies
it. (Patching the int32 biases of onnxruntime's static int8 the same way was measured and left out:
there the activations' rounding dominates — PP-OCR rec per-channel cosine 0.951 -> 0.962, det mixed.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def conv_input_means(model: Path, feeds: list[dict[str, np.ndarray]], threads: int | None = None
                     ) -> dict[str, np.ndarray]:
    """{Conv node name: the mean of its input per channel over ``feeds``}, for the float
    model's convolutions whose weights are initializers (the ones a quantizer rounds)."""
    import onnx

    from shipyard.errors import ShipyardError
    from shipyard.model import Model
    from shipyard.runtimes import open_runner

    proto = onnx.load(str(model), load_external_data=False)
    weights = {i.name for i in proto.graph.initializer}
    convs = {n.name: n.input[0] for n in proto.graph.node
             if n.op_type == "Conv" and n.name and len(n.input) > 1 and n.input[1] in weights}
    if not convs or not feeds:
        return {}
    sums: dict[str, np.ndarray] = {}
    try:
        with open_runner(Model("onnx", Path(model)), threads=threads, intermediates=True) as runner:
            for feed in feeds:
                got = runner.fetch(feed, list(dict.fromkeys(convs.values())))
                for tensor, value in got.items():
                    if value.ndim >= 2:
                        axes = (0, *range(2, value.ndim))  # NC...: per channel
                        mean = value.astype(np.float64).mean(axis=axes)
                        sums[tensor] = sums.get(tensor, 0.0) + mean
    except ShipyardError:
        return {}  # an engine that cannot return these tensors: no correction (the report says so), not a failure
    return {node: sums[tensor] / len(feeds) for node, tensor in convs.items() if tensor in sums}


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
