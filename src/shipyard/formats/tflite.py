"""TFLite: the flatbuffer is read with the ``tflite`` schema package, never with a runtime.

Reading a flatbuffer trusts its offsets, so the parser checks them against the file size:
a truncated file is reported as such instead of yielding garbage (or a crash in a runtime).
"""
from __future__ import annotations

import mmap
import struct
from functools import lru_cache
from pathlib import Path

from shipyard import flops as F
from shipyard.errors import ModelFormatError
from shipyard.model import Model, Signature, TensorSpec
from shipyard.summary import Summary, add_param, histogram

_DTYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
    7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64",
    13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16",
}


@lru_cache(maxsize=1)
def _op_names() -> dict[int, str]:
    import tflite

    ops = tflite.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def _text(raw: bytes | None) -> str:
    """A flatbuffer string (checked to be UTF-8 by the verifier); '' when absent."""
    return raw.decode("utf-8") if raw else ""


class TFLiteFile:
    """A parsed ``.tflite`` file kept open (memory-mapped) while it is looked at."""

    def __init__(self, path: Path, data: bytes | None = None):
        import tflite

        self.path = path
        if data is not None:
            self.buf = data
        else:
            with path.open("rb") as fh:
                try:
                    self.buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except ValueError as exc:
                    raise ModelFormatError(f"{path}: the file is empty") from exc
        from shipyard.formats.tflite_verify import verify

        verify(self.buf, path)  # offsets, lengths, strings and indices checked before any is used
        try:
            self.model = tflite.Model.GetRootAsModel(self.buf, 0)
            self.version = self.model.Version()
            self.subgraph_count = self.model.SubgraphsLength()
            if self.subgraph_count == 0:
                raise ModelFormatError(f"{path}: a TFLite file with no subgraph")
            self.subgraphs = [self.model.Subgraphs(i) for i in range(self.subgraph_count)]
            self.opcodes = [self._opcode_name(self.model.OperatorCodes(i)) for i in range(self.model.OperatorCodesLength())]
            self._check_buffers()
        except (struct.error, IndexError, ValueError, TypeError) as exc:
            raise ModelFormatError(
                f"{path}: truncated or corrupt TFLite file (flatbuffer offsets point outside the file: {exc})",
                hint="re-convert the model; if it was copied, compare its size with the original",
            ) from exc

    def _opcode_name(self, code) -> str:
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = _op_names().get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.CustomCode()
            return f"CUSTOM:{custom.decode() if custom else '?'}"
        return name

    def _check_buffers(self) -> None:
        size = len(self.buf)
        for i in range(self.model.BuffersLength()):
            b = self.model.Buffers(i)
            if b.Offset() > 1:  # weights stored after the flatbuffer (models > 2 GB)
                end = b.Offset() + b.Size()
            else:
                o = b._tab.Offset(4)
                end = b._tab.Vector(o) + b.DataLength() if o else 0
            if end > size:
                raise ModelFormatError(
                    f"{self.path}: truncated TFLite file: buffer {i} ends at byte {end} but the file has {size} bytes",
                    hint="re-convert the model; if it was copied, compare its size with the original",
                )

    def tensor_spec(self, subgraph, index: int) -> TensorSpec:
        t = subgraph.Tensors(index)
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else None
        shape = sig if sig is not None and not isinstance(sig, int) else t.ShapeAsNumpy()
        dims = tuple(int(d) for d in shape) if not isinstance(shape, int) else ()
        return TensorSpec(_text(t.Name()) or f"tensor{index}", _DTYPES.get(t.Type(), f"type{t.Type()}"), dims)

    def shape(self, subgraph, index: int) -> tuple[int, ...] | None:
        if index < 0:
            return None
        s = subgraph.Tensors(index).ShapeAsNumpy()
        return tuple(int(d) for d in s) if not isinstance(s, int) else ()

    def signature(self) -> Signature:
        g = self.subgraphs[0]
        inputs = tuple(self.tensor_spec(g, i) for i in g.InputsAsNumpy()) if g.InputsLength() else ()
        outputs = tuple(self.tensor_spec(g, i) for i in g.OutputsAsNumpy()) if g.OutputsLength() else ()
        return Signature(inputs, outputs)

    def signature_keys(self) -> list[str]:
        return [_text(self.model.SignatureDefs(i).SignatureKey()) for i in range(self.model.SignatureDefsLength())]

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()


def ops_by_output(data: bytes, dtypes: tuple[str, ...] = ("float32",)) -> dict[str, tuple[str, list[str]]]:
    """{output tensor name: (op name, input tensor names)} of the first subgraph's ops whose
    first output has one of ``dtypes`` (QUANTIZE/DEQUANTIZE left out). On a calibrated float
    model the keys are the names the TFLite quantizer's deny-list takes."""
    f = TFLiteFile(Path("<memory>"), data)
    g = f.subgraphs[0]
    out: dict[str, tuple[str, list[str]]] = {}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        name = f.opcodes[op.OpcodeIndex()]
        if name in ("QUANTIZE", "DEQUANTIZE") or not op.OutputsLength():
            continue
        t = g.Tensors(int(op.Outputs(0)))
        if _DTYPES.get(t.Type()) in dtypes:
            inputs = [_text(g.Tensors(int(j)).Name()) for j in op.InputsAsNumpy() if j >= 0] if op.InputsLength() else []
            out[_text(t.Name())] = (name, inputs)
    return out


def signature(model: Model) -> Signature:
    f = TFLiteFile(model.path, model.in_memory())
    try:
        return f.signature()
    finally:
        f.close()


def summarize(model: Model) -> Summary:
    f = TFLiteFile(model.path, model.in_memory())
    ops: list[str] = []
    param_bytes: dict[str, int] = {}
    params = 0
    tally = F.FlopTally()
    for g in f.subgraphs:
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            b = f.model.Buffers(t.Buffer()) if t.Buffer() > 0 else None
            if b is None or (b.DataLength() == 0 and b.Offset() <= 1):
                continue
            dtype = _DTYPES.get(t.Type(), "unknown")
            count = F.numel(f.shape(g, i))
            params += count
            add_param(param_bytes, dtype, b.Size() if b.Offset() > 1 else b.DataLength())
        for j in range(g.OperatorsLength()):
            op = g.Operators(j)
            name = f.opcodes[op.OpcodeIndex()]
            ops.append(name)
            tally.add(name, _op_flops(f, g, op, name))
    sig = f.signature()
    metadata = {}
    for i in range(f.model.MetadataLength()):
        m = f.model.Metadata(i)
        metadata[_text(m.Name())] = f"buffer {m.Buffer()}"
    description = f.model.Description()
    return Summary(
        format="tflite",
        path=str(model.path),
        size_bytes=model.path.stat().st_size,
        inputs=list(sig.inputs),
        outputs=list(sig.outputs),
        ops=histogram(ops),
        params=params,
        param_bytes=param_bytes,
        flops=tally.total,
        flops_by_op=tally.sorted_by_op(),
        producer=_text(description) or None,
        version=f"schema {f.version}",
        metadata=metadata,
        details={
            "subgraphs": f.subgraph_count,
            "signature_keys": f.signature_keys(),
            "custom_ops": sorted({o for o in ops if o.startswith("CUSTOM:")}),
            "flops_uncounted_ops": tally.uncounted,
        },
    )


# ---------------------------------------------------------------- FLOPs

_ELEMENTWISE = {
    "ADD", "SUB", "MUL", "DIV", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH",
    "HARD_SWISH", "LEAKY_RELU", "PRELU", "EXP", "LOG", "SQRT", "RSQRT", "SQUARE", "POW", "ABS",
    "NEG", "MAXIMUM", "MINIMUM", "ELU", "GELU", "SQUARED_DIFFERENCE", "ADD_N", "FLOOR", "CEIL",
    "ROUND", "SIGN", "SELECT", "SELECT_V2", "EQUAL", "GREATER", "LESS", "LOGICAL_AND", "LOGICAL_OR",
}
_FREE = {
    "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD",
    "GATHER", "GATHER_ND", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "SHAPE",
    "CAST", "QUANTIZE", "DEQUANTIZE", "TILE", "BROADCAST_TO", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "FILL", "ZEROS_LIKE", "ONES_LIKE", "RANGE",
}
_REDUCE = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "ARG_MAX", "ARG_MIN", "REDUCE_ANY"}
_FUSED_ACT_OPTIONS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "DIV"}


def _fused_activation(op, name: str) -> bool:
    """True when the op carries a fused activation (RELU, RELU6, ...), which costs 1 FLOP/output."""
    import tflite

    option_types = {
        "CONV_2D": tflite.Conv2DOptions,
        "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
        "FULLY_CONNECTED": tflite.FullyConnectedOptions,
        "ADD": tflite.AddOptions,
        "SUB": tflite.SubOptions,
        "MUL": tflite.MulOptions,
        "DIV": tflite.DivOptions,
    }
    table = op.BuiltinOptions()
    if table is None or name not in option_types:
        return False
    opts = option_types[name]()
    opts.Init(table.Bytes, table.Pos)
    return opts.FusedActivationFunction() != 0


def _op_flops(f: TFLiteFile, g, op, name: str) -> int | None:
    ins = [f.shape(g, int(i)) for i in op.InputsAsNumpy()] if op.InputsLength() else []
    out = f.shape(g, int(op.Outputs(0))) if op.OutputsLength() else None
    if name in _FREE:
        return 0
    if out is None:
        return None
    act = F.numel(out) if name in _FUSED_ACT_OPTIONS and _fused_activation(op, name) else 0
    has_bias = len(ins) > 2 and ins[2] is not None
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV") and (len(ins) < 2 or ins[1] is None
                                                                      or len(ins[1]) != 4):
        return None  # no 4-D weights: not countable
    if name == "CONV_2D" and len(ins) > 1 and ins[1]:
        w = ins[1]  # [Cout, kh, kw, Cin/groups]
        return F.conv(out, w[1:3], w[3], has_bias) + act
    if name == "DEPTHWISE_CONV_2D" and len(ins) > 1 and ins[1]:
        return F.depthwise(out, ins[1][1:3], has_bias) + act
    if name == "FULLY_CONNECTED" and len(ins) > 1 and ins[1]:
        return F.matmul(out, ins[1][-1], has_bias) + act
    if name == "BATCH_MATMUL" and ins and ins[0]:
        return F.matmul(out, ins[0][-1])
    if name == "TRANSPOSE_CONV" and len(ins) > 2 and ins[1] and ins[2]:
        w = ins[1]
        return 2 * F.numel(ins[2]) * w[0] * w[1] * w[2]
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"):
        import tflite

        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = tflite.Pool2DOptions()
        opts.Init(table.Bytes, table.Pos)
        return F.pool(out, (opts.FilterHeight(), opts.FilterWidth()))
    if name in ("SOFTMAX", "LOG_SOFTMAX"):
        return F.elementwise(out, 5)
    if name in _REDUCE:
        return F.reduce(ins[0]) if ins and ins[0] is not None else None
    if name in _ELEMENTWISE:
        return F.elementwise(out) + act
    return None
