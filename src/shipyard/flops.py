"""FLOP formulas shared by the ONNX, TFLite and GraphDef counters.

Conventions (stated once, used everywhere): a multiply-add is 2 FLOPs; a bias add, an
element-wise op or an activation is 1 FLOP per output element; inference batch norm is 2
(scale and shift); softmax is 5 per element (max, subtract, exp, sum, divide); pooling is
one FLOP per window element per output. Data movement (reshape, transpose, pad, concat,
gather) is 0. Dynamic dimensions are counted as 1, so FLOPs are per sample.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import prod

Shape = Sequence[int]

# Canonical kinds; each format maps its op names onto these.
CONV = "conv"
DEPTHWISE = "depthwise"
MATMUL = "matmul"
ELEMENTWISE = "elementwise"
BATCHNORM = "batchnorm"
SOFTMAX = "softmax"
POOL = "pool"
REDUCE = "reduce"
FREE = "free"


def numel(shape: Shape | None) -> int:
    return int(prod(max(int(d), 1) for d in shape)) if shape is not None else 0


def conv(out_shape: Shape, kernel_spatial: Shape, in_channels_per_group: int, bias: bool = False) -> int:
    """Dense (or grouped) convolution: each output element is a dot product over the window."""
    out = numel(out_shape)
    return 2 * out * numel(kernel_spatial) * in_channels_per_group + (out if bias else 0)


def depthwise(out_shape: Shape, kernel_spatial: Shape, bias: bool = False) -> int:
    out = numel(out_shape)
    return 2 * out * numel(kernel_spatial) + (out if bias else 0)


def matmul(out_shape: Shape, inner: int, bias: bool = False) -> int:
    out = numel(out_shape)
    return 2 * out * int(inner) + (out if bias else 0)


def elementwise(out_shape: Shape, per_element: int = 1) -> int:
    return numel(out_shape) * per_element


def pool(out_shape: Shape, window: Shape) -> int:
    return numel(out_shape) * numel(window)


def reduce(in_shape: Shape) -> int:
    return numel(in_shape)


class FlopTally:
    """Accumulates FLOPs by op type and remembers which op types could not be counted."""

    def __init__(self) -> None:
        self.by_op: dict[str, int] = {}
        self.uncounted: dict[str, int] = {}
        self.counted_any = False

    def add(self, op_type: str, flops: int | None) -> None:
        if flops is None:
            self.uncounted[op_type] = self.uncounted.get(op_type, 0) + 1
            return
        self.counted_any = True
        if flops:
            self.by_op[op_type] = self.by_op.get(op_type, 0) + int(flops)

    @property
    def total(self) -> int | None:
        return sum(self.by_op.values()) if self.counted_any else None

    def sorted_by_op(self) -> dict[str, int]:
        return dict(sorted(self.by_op.items(), key=lambda kv: -kv[1]))
