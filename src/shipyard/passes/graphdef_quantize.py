"""``quantize_nodes``: float GraphDef ops -> TensorFlow's eight-bit kernels (QuantizedConv2D,
QuantizedMatMul, QuantizedBiasAdd, QuantizedRelu/Relu6, QuantizedMaxPool/AvgPool), as TF's
graph transform tool did.

Written here because the tool is C++ behind bazel and no Python package does it. Each float
input becomes quint8 through ``QuantizeV2`` (MIN_FIRST) with its range taken from, in order: a
``FakeQuantWithMinMax*`` node that produced it (ranges learned in quantization-aware
training), ``input_min/input_max`` for the graph's inputs, ``fallback_min/fallback_max``, or
the tensor's own min and max at run time. 32-bit results are requantized to eight bits
(``RequantizationRange`` + ``Requantize``), and a ``Dequantize`` under the original node's name
gives float back to consumers that stay float. Between two quantized ops the eight-bit tensor
is passed on directly (no Dequantize -> QuantizeV2 round trip).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shipyard.errors import UsageError
from shipyard.formats import tf_protos
from shipyard.passes.context import Context
from shipyard.passes.graphdef import sort_by_execution_order
from shipyard.passes.registry import Params

DT_FLOAT, DT_INT32, DT_QUINT8, DT_QINT32 = 1, 3, 12, 13
_FAKE_QUANT = {"FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs"}


@dataclass(frozen=True)
class _Quantized:
    """An eight-bit tensor and its float range, as three tensor references."""

    value: str
    min: str
    max: str


def _nhwc(node) -> bool:
    return node.attr["data_format"].s in (b"", b"NHWC")


def _float(node) -> bool:
    return node.attr["T"].type in (0, DT_FLOAT)


# op -> (quantized op, float inputs to quantize, result is 32-bit, can it be quantized)
_OPS = {
    "Conv2D": ("QuantizedConv2D", 2, True, lambda n: _float(n) and _nhwc(n)),
    "MatMul": ("QuantizedMatMul", 2, True, _float),
    "BiasAdd": ("QuantizedBiasAdd", 2, True, lambda n: _float(n) and _nhwc(n)),
    "Relu": ("QuantizedRelu", 1, False, _float),
    "Relu6": ("QuantizedRelu6", 1, False, _float),
    "MaxPool": ("QuantizedMaxPool", 1, False, lambda n: _float(n) and _nhwc(n)),
    "AvgPool": ("QuantizedAvgPool", 1, False, lambda n: _float(n) and _nhwc(n)),
}


class _Builder:
    def __init__(self, graph_def, ctx: Context, ranges: dict[str, tuple[float, float]], fallback):
        self.g = graph_def
        self.by_name = {n.name: n for n in graph_def.node}
        self.inputs = set(ctx.inputs)
        self.ranges = ranges  # graph input -> (min, max)
        self.fallback = fallback
        self.cache: dict[str, _Quantized] = {}
        self.dequantized: dict[str, _Quantized] = {}  # our Dequantize node -> the eight-bit tensor it reads
        self.added: list = []

    def node(self, name: str, op: str, inputs: list[str], device: str = ""):
        n = self.g.node.add()
        n.name, n.op, n.device = name, op, device
        n.input.extend(inputs)
        self.by_name[name] = n
        self.added.append(n)
        return n

    def const(self, name: str, value: np.ndarray, dtype: int) -> str:
        n = self.node(name, "Const", [])
        n.attr["dtype"].type = dtype
        tensor = n.attr["value"].tensor
        tensor.dtype = dtype
        for d in value.shape:
            tensor.tensor_shape.dim.add().size = int(d)
        tensor.tensor_content = np.ascontiguousarray(value).tobytes()
        return name

    def _range(self, ref: str, base: str) -> tuple[str, str]:
        """Tensor references holding ``ref``'s min and max."""
        producer = self.by_name.get(ref.split(":")[0])
        fixed = None
        if producer is not None and producer.op == "FakeQuantWithMinMaxArgs":
            fixed = (producer.attr["min"].f, producer.attr["max"].f)
        elif producer is not None and producer.op == "FakeQuantWithMinMaxVars":
            lo, hi = (self.by_name.get(r.split(":")[0]) for r in producer.input[1:3])
            if lo is not None and hi is not None and lo.op == hi.op == "Const":
                return producer.input[1], producer.input[2]
        elif producer is not None and producer.op == "Const":
            value = tf_protos.tensor_to_numpy(producer.attr["value"].tensor)
            if value is not None and value.size:
                fixed = (min(float(value.min()), 0.0), max(float(value.max()), 0.0))
        elif producer is not None and producer.name in self.inputs and producer.name in self.ranges:
            fixed = self.ranges[producer.name]
        elif self.fallback is not None:
            fixed = self.fallback
        if fixed is not None:
            return (self.const(f"{base}/min", np.array(fixed[0], np.float32), DT_FLOAT),
                    self.const(f"{base}/max", np.array(fixed[1], np.float32), DT_FLOAT))
        flat = self.node(f"{base}/reshape", "Reshape", [ref, self.const(f"{base}/flat_shape", np.array([-1], np.int32), DT_INT32)])
        flat.attr["T"].type, flat.attr["Tshape"].type = DT_FLOAT, DT_INT32
        axis = self.const(f"{base}/axis", np.array([0], np.int32), DT_INT32)
        refs = []
        for op in ("Min", "Max"):
            r = self.node(f"{base}/{op.lower()}", op, [flat.name, axis])
            r.attr["T"].type, r.attr["Tidx"].type = DT_FLOAT, DT_INT32
            r.attr["keep_dims"].b = False
            refs.append(r.name)
        return refs[0], refs[1]

    def quantized(self, ref: str) -> _Quantized:
        """``ref`` as quint8: reused when it comes out of one of our Dequantize nodes."""
        ref = ref if ":" not in ref or not ref.endswith(":0") else ref[:-2]
        if ref in self.dequantized:
            return self.dequantized[ref]
        if ref in self.cache:
            return self.cache[ref]
        base = ref.replace(":", "_") + "/eightbit"
        lo, hi = self._range(ref, base)
        q = self.node(f"{base}/quantize", "QuantizeV2", [ref, lo, hi])
        q.attr["T"].type = DT_QUINT8
        q.attr["mode"].s = b"MIN_FIRST"
        self.cache[ref] = _Quantized(q.name, f"{q.name}:1", f"{q.name}:2")
        return self.cache[ref]

    def replace(self, node) -> None:
        op, arity, wide, _ = _OPS[node.op]
        name, device = node.name, node.device
        attrs = {k: node.attr[k] for k in node.attr}
        operands = [self.quantized(r) for r in node.input[:arity]]
        controls = [r for r in node.input if r.startswith("^")]
        q = self.node(f"{name}/eightbit", op, [o.value for o in operands]
                      + [x for o in operands for x in (o.min, o.max)] + controls, device)
        if op == "QuantizedConv2D":
            q.attr["Tinput"].type = q.attr["Tfilter"].type = DT_QUINT8
            q.attr["out_type"].type = DT_QINT32
            for k in ("strides", "padding", "dilations"):
                if k in attrs:
                    q.attr[k].CopyFrom(attrs[k])
        elif op == "QuantizedMatMul":
            q.attr["T1"].type = q.attr["T2"].type = DT_QUINT8
            q.attr["Toutput"].type = DT_QINT32
            for k in ("transpose_a", "transpose_b"):
                if k in attrs:
                    q.attr[k].CopyFrom(attrs[k])
        elif op == "QuantizedBiasAdd":
            q.attr["T1"].type = q.attr["T2"].type = DT_QUINT8
            q.attr["out_type"].type = DT_QINT32
        elif op in ("QuantizedRelu", "QuantizedRelu6"):
            q.attr["Tinput"].type = q.attr["out_type"].type = DT_QUINT8
        else:  # pools
            q.attr["T"].type = DT_QUINT8
            for k in ("ksize", "strides", "padding"):
                q.attr[k].CopyFrom(attrs[k])
        result = _Quantized(q.name, f"{q.name}:1", f"{q.name}:2")
        if wide:  # qint32 -> the narrowest quint8 range that holds this run's values
            rr = self.node(f"{name}/eightbit/requant_range", "RequantizationRange", [q.name, result.min, result.max], device)
            rr.attr["Tinput"].type = DT_QINT32
            # The used range need not hold 0 (one sample whose values are all negative); a Relu after it
            # would then clamp at the wrong level, so the range is widened to include 0.
            zero = self.const(f"{name}/eightbit/zero", np.array(0, np.float32), DT_FLOAT)
            lo = self.node(f"{name}/eightbit/range_min", "Minimum", [rr.name, zero], device)
            hi = self.node(f"{name}/eightbit/range_max", "Maximum", [f"{rr.name}:1", zero], device)
            lo.attr["T"].type = hi.attr["T"].type = DT_FLOAT
            rq = self.node(f"{name}/eightbit/requantize", "Requantize",
                           [q.name, result.min, result.max, lo.name, hi.name], device)
            rq.attr["Tinput"].type, rq.attr["out_type"].type = DT_QINT32, DT_QUINT8
            result = _Quantized(rq.name, f"{rq.name}:1", f"{rq.name}:2")
        # the original node becomes the Dequantize: float consumers and outputs keep reading it by name
        node.op = "Dequantize"
        node.ClearField("attr")
        node.attr["T"].type = DT_QUINT8
        node.attr["mode"].s = b"MIN_FIRST"
        del node.input[:]
        node.input.extend([result.value, result.min, result.max])
        self.dequantized[name] = result


def quantize_nodes(graph_def, params: Params, ctx: Context):
    """Replace the float ops TF has eight-bit kernels for; see the module docstring."""
    def number(key: str) -> float | None:
        raw = params.str(key)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise params.bad(key, raw, "a number") from None

    bounds = {k: number(k) for k in ("input_min", "input_max", "fallback_min", "fallback_max")}
    for lo, hi in (("input_min", "input_max"), ("fallback_min", "fallback_max")):
        if (bounds[lo] is None) != (bounds[hi] is None):
            raise UsageError(f"quantize_nodes: give both {lo} and {hi}, or neither")
        if bounds[lo] is not None and not bounds[lo] < bounds[hi]:
            raise UsageError(f"quantize_nodes: {lo}={bounds[lo]:g} must be below {hi}={bounds[hi]:g}")
    ranges = ({name: (bounds["input_min"], bounds["input_max"]) for name in ctx.inputs}
              if bounds["input_min"] is not None else {})
    fallback = (bounds["fallback_min"], bounds["fallback_max"]) if bounds["fallback_min"] is not None else None
    sort_by_execution_order(graph_def, params, ctx)  # producers first: a consumer finds their eight-bit tensor
    order = [n for n in graph_def.node if n.op in _OPS and _OPS[n.op][3](n)]
    if not order:
        raise UsageError("quantize_nodes: the graph has no float op TensorFlow has an eight-bit kernel for",
                         hint="quantizable ops: " + ", ".join(_OPS))
    builder = _Builder(graph_def, ctx, ranges, fallback)
    for node in order:
        builder.replace(node)
    # Dequantize nodes read by no one (every consumer now takes the eight-bit tensor) are dropped.
    used = {r.lstrip("^").split(":")[0] for n in graph_def.node for r in n.input} | set(ctx.outputs)
    dead = {name for name in builder.dequantized if name not in used}
    kept = [n for n in graph_def.node if n.name not in dead]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    fake = sum(n.op in _FAKE_QUANT for n in graph_def.node)
    ctx.notes.append(f"quantize_nodes: {len(order)} ops run in eight bits"
                     + (f"; ranges from {fake} FakeQuant node(s)" if fake else ""))
    return graph_def

