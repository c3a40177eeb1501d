"""Static shape inference for the common ops of a TensorFlow GraphDef, in pure Python.

TF's own shape inference lives in C++ behind ``import tensorflow`` (about 2 s); inspecting a
frozen graph needs shapes only to count FLOPs and to describe outputs, so the ops that
carry the arithmetic of CNNs and MLPs are inferred here and everything else is left unknown
(its FLOPs are then reported as uncounted rather than guessed).
"""
from __future__ import annotations

from collections.abc import Iterable
from math import ceil

import numpy as np

from shipyard.formats.tf_protos import shape_of, tensor_to_numpy

Shape = tuple  # ints, -1 for unknown dims

SAME_SHAPE = {
    "Identity", "Relu", "Relu6", "Elu", "Selu", "Softplus", "Softsign", "LeakyRelu", "Sigmoid",
    "Tanh", "Neg", "Exp", "Log", "Sqrt", "Rsqrt", "Square", "Abs", "Cast", "StopGradient",
    "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BiasAdd", "Softmax", "LogSoftmax",
    "CheckNumerics", "Snapshot", "PreventGradient", "Round", "Floor", "Ceil", "Erf", "Gelu",
    "BatchNormWithGlobalNormalization", "Reciprocal", "ClipByValue", "IdentityN", "Sign",
    "Dequantize", "QuantizeV2", "FakeQuantWithMinMaxVars", "ReadVariableOp",
}
BROADCAST = {
    "Add", "AddV2", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "Maximum", "Minimum",
    "SquaredDifference", "Pow", "FloorDiv", "FloorMod", "Greater", "GreaterEqual", "Less",
    "LessEqual", "Equal", "NotEqual", "LogicalAnd", "LogicalOr", "SelectV2",
}
REDUCE = {"Mean", "Sum", "Max", "Min", "Prod", "All", "Any", "ArgMax", "ArgMin"}


def _in_name(ref: str) -> str:
    """'node:1' -> 'node:1', 'node:0' / 'node' -> 'node', '^ctl' -> '' (control edge)."""
    if ref.startswith("^"):
        return ""
    return ref.removesuffix(":0")


def topological(nodes: Iterable) -> list:
    """Nodes ordered so that producers come before consumers (cycles are appended last)."""
    nodes = list(nodes)
    by_name = {n.name: n for n in nodes}
    pending = {n.name: {i.lstrip("^").split(":")[0] for i in n.input} & by_name.keys() for n in nodes}
    users: dict[str, list[str]] = {}
    for name, deps in pending.items():
        for d in deps:
            users.setdefault(d, []).append(name)
    ready = [n.name for n in nodes if not pending[n.name]]
    order = []
    while ready:
        name = ready.pop()
        order.append(by_name[name])
        for u in users.get(name, ()):
            deps = pending[u]
            deps.discard(name)
            if not deps:
                ready.append(u)
    seen = {n.name for n in order}
    order.extend(n for n in nodes if n.name not in seen)
    return order


class ShapeInference:
    """Shapes (and small constant values) of every tensor whose op is known."""

    def __init__(self, graph_def, input_shapes: dict[str, Shape] | None = None):
        self.shapes: dict[str, Shape | None] = {}
        self.values: dict[str, np.ndarray] = {}
        self._overrides = input_shapes or {}
        for node in topological(graph_def.node):
            try:
                shape = self._infer(node)
            except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError):
                shape = None
            if shape is None and "_output_shapes" in node.attr and node.attr["_output_shapes"].list.shape:
                shape = shape_of(node.attr["_output_shapes"].list.shape[0])
            self.shapes[node.name] = tuple(shape) if shape is not None else None

    def shape(self, ref: str) -> Shape | None:
        return self.shapes.get(_in_name(ref))

    def _inputs(self, node) -> list[Shape | None]:
        return [self.shape(i) for i in node.input if not i.startswith("^")]

    def _value(self, ref: str) -> np.ndarray | None:
        return self.values.get(_in_name(ref))

    def _infer(self, node) -> Shape | None:
        op = node.op
        attr = node.attr
        ins = self._inputs(node)
        if op in ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault"):
            if node.name in self._overrides:
                return self._overrides[node.name]
            return shape_of(attr["shape"].shape) if "shape" in attr else (ins[0] if ins else None)
        if op == "Const":
            t = attr["value"].tensor
            shape = shape_of(t.tensor_shape)
            if shape is not None and int(np.prod(shape or (1,))) <= 64:
                value = tensor_to_numpy(t)
                if value is not None:
                    self.values[node.name] = value
            return shape
        if op in ("VariableV2", "Variable", "VarHandleOp"):
            return shape_of(attr["shape"].shape)
        if op in SAME_SHAPE:
            return ins[0]
        if op in BROADCAST:
            return broadcast(*[s for s in ins if s is not None]) if all(s is not None for s in ins) else None
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            return self._conv(node, ins)
        if op in ("MaxPool", "AvgPool"):
            return self._pool(node, ins[0])
        if op == "MatMul":
            a, b = ins
            m = a[1] if attr["transpose_a"].b else a[0]
            n = b[0] if attr["transpose_b"].b else b[1]
            return (m, n)
        if op in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, b = ins
            m = a[-1] if attr["adj_x"].b else a[-2]
            n = b[-2] if attr["adj_y"].b else b[-1]
            return broadcast(a[:-2], b[:-2]) + (m, n)
        if op in REDUCE:
            return self._reduce(node, ins[0])
        if op == "Reshape":
            return self._reshape(ins[0], self._value(node.input[1]))
        if op in ("Pad", "PadV2", "MirrorPad"):
            pads = self._value(node.input[1])
            return tuple(d + int(p[0]) + int(p[1]) if d >= 0 else -1 for d, p in zip(ins[0], pads))
        if op == "ConcatV2":
            axis = int(self._value(node.input[-1]))
            parts = ins[:-1]
            axis %= len(parts[0])
            total = sum(p[axis] for p in parts) if all(p[axis] >= 0 for p in parts) else -1
            return parts[0][:axis] + (total,) + parts[0][axis + 1 :]
        if op == "Squeeze":
            dims = [d % len(ins[0]) for d in attr["squeeze_dims"].list.i] or [i for i, d in enumerate(ins[0]) if d == 1]
            return tuple(d for i, d in enumerate(ins[0]) if i not in dims)
        if op == "ExpandDims":
            axis = int(self._value(node.input[1]))
            shape = list(ins[0])
            shape.insert(axis if axis >= 0 else len(shape) + axis + 1, 1)
            return tuple(shape)
        if op == "Transpose":
            perm = self._value(node.input[1])
            return tuple(ins[0][int(p)] for p in perm)
        if op == "Shape":
            return (len(ins[0]),)
        return None

    def _spatial(self, node, shape: Shape) -> tuple[list[int], int]:
        """Indices of H and W and of the channel dimension, from data_format."""
        fmt = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
        return ([2, 3], 1) if fmt.startswith("NC") else ([1, 2], 3)

    def _window_out(self, size: int, k: int, s: int, d: int, padding: str) -> int:
        if size < 0:
            return -1
        if padding == "SAME":
            return ceil(size / s)
        return ceil((size - (k - 1) * d) / s)

    def _conv(self, node, ins) -> Shape:
        x, w = ins[0], ins[1]
        hw, c = self._spatial(node, x)
        strides = list(node.attr["strides"].list.i) or [1, 1, 1, 1]
        dil = list(node.attr["dilations"].list.i) or [1, 1, 1, 1]
        padding = node.attr["padding"].s.decode()
        out = list(x)
        for axis, k in zip(hw, w[:2]):
            out[axis] = self._window_out(x[axis], k, strides[axis], dil[axis], padding)
        out[c] = w[3] if node.op == "Conv2D" else w[2] * w[3]
        return tuple(out)

    def _pool(self, node, x) -> Shape:
        hw, _ = self._spatial(node, x)
        ksize = list(node.attr["ksize"].list.i)
        strides = list(node.attr["strides"].list.i)
        padding = node.attr["padding"].s.decode()
        out = list(x)
        for axis in hw:
            out[axis] = self._window_out(x[axis], ksize[axis], strides[axis], 1, padding)
        return tuple(out)

    def _reduce(self, node, x) -> Shape:
        axes = self._value(node.input[1])
        keep = node.attr["keep_dims"].b if "keep_dims" in node.attr else False
        axes = {int(a) % len(x) for a in np.atleast_1d(axes)}
        if keep:
            return tuple(1 if i in axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i not in axes)

    @staticmethod
    def _reshape(x, target) -> Shape:
        target = [int(t) for t in np.atleast_1d(target)]
        if -1 in target and x is not None and all(d >= 0 for d in x):
            known = int(np.prod([t for t in target if t != -1])) or 1
            target[target.index(-1)] = int(np.prod(x)) // known
        return tuple(target)


def broadcast(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = [d for d in dims if d != 1]
        out.append(-1 if any(d < 0 for d in known) else (max(known) if known else 1))
    return tuple(out)
