"""onnxscript rewrite rules that fold a per-channel Mul or Add by constants after a Conv into
the Conv's weights and bias.

Why written here: onnxscript ships BatchNormalization fusions and an affine fusion, but its
affine rule takes only scalar factors, and a folded or hand-written batch norm leaves a
*per-channel* ``Mul``/``Add`` behind (TF's graph_transforms ``fold_batch_norms`` folds exactly
this). The rules use onnxscript's pattern API, so the matching, replacement and clean-up are
its own.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase


def _per_channel(value: ir.Value, channels: int, rank: int) -> np.ndarray | None:
    """The constant as one factor per output channel, or None when it is not shaped so (a
    scalar, or all-ones dimensions except the channel axis 1 of the Conv's output)."""
    if value.const_value is None or value.is_graph_input():
        return None
    array = value.const_value.numpy()
    if array.ndim > rank or not np.issubdtype(array.dtype, np.floating):
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).astype(np.float32)


class _ConvThenConstant(RewriteRuleClassBase):
    """``Conv(x, W[, B]) <op> c`` with c per output channel."""

    def _check(self, conv_out: ir.Value, constant: ir.Value) -> tuple[MatchResult, np.ndarray | None]:
        result = MatchResult()
        conv = conv_out.producer()
        weights = conv.inputs[1]
        if weights is None or weights.const_value is None or weights.is_graph_input():
            return result.fail("the Conv's weights are not constant"), None
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias is not None and (bias.const_value is None or bias.is_graph_input()):
            return result.fail("the Conv's bias is not constant"), None
        if len(conv_out.uses()) != 1:
            return result.fail("the Conv's output has other users"), None
        for shared in (weights, bias):
            if shared is not None and any(user is not conv for user, _ in shared.uses()):
                return result.fail(f"{shared.name} is shared with other nodes"), None
        w = weights.const_value.numpy()
        factor = _per_channel(constant, w.shape[0], w.ndim)
        if factor is None:
            return result.fail("the constant is not one value per output channel"), None
        return result, factor

    @staticmethod
    def _conv(op, x: ir.Value, conv: ir.Node, w: np.ndarray, b: np.ndarray):
        weights, bias = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
        return op.Conv(x, op.initializer(ir.tensor(w.astype(np.float32)), name=weights.name),
                       op.initializer(ir.tensor(b.astype(np.float32)),
                                      name=bias.name if bias is not None else weights.name + "_bias"),
                       **conv.attributes)

    @staticmethod
    def _weights(conv: ir.Node) -> tuple[np.ndarray, np.ndarray]:
        w = conv.inputs[1].const_value.numpy()
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = bias.const_value.numpy() if bias is not None else np.zeros(w.shape[0], np.float32)
        return w, b


class ConvMul(_ConvThenConstant):
    def pattern(self, op, x, scale):
        return op.Mul(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), scale)

    def check(self, context, x, scale, conv_out) -> MatchResult:
        return self._check(conv_out, scale)[0]

    def rewrite(self, op, x, scale, conv_out):
        conv = conv_out.producer()
        factor = self._check(conv_out, scale)[1]
        w, b = self._weights(conv)
        return self._conv(op, x, conv, w * factor.reshape((-1,) + (1,) * (w.ndim - 1)), b * factor)


class ConvAdd(_ConvThenConstant):
    def pattern(self, op, x, shift):
        return op.Add(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), shift)

    def check(self, context, x, shift, conv_out) -> MatchResult:
        return self._check(conv_out, shift)[0]

    def rewrite(self, op, x, shift, conv_out):
        conv = conv_out.producer()
        w, b = self._weights(conv)
        return self._conv(op, x, conv, w, b + self._check(conv_out, shift)[1])


def rules() -> list:
    return [ConvMul.rule(), ConvAdd.rule()]
