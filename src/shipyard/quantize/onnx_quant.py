"""ONNX quantization through onnxruntime.quantization.

Defaults chosen for speed on x86 CPUs (measured, see docs/quantize.md): static quantization
writes the QOperator form with uint8 activations and int8 weights (QLinearConv), which
onnxruntime runs about 2x faster than float; the QDQ form with int8 activations runs no
faster than float here, and dynamic quantization of convolutions (ConvInteger) is several
times slower. Softmax nodes stay float: an 8-bit probability has steps of 1/256.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard.errors import UsageError

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "QGemm", "QLinearAdd"}
KEEP_FLOAT_OPS = {"Softmax", "LogSoftmax"}


@dataclass
class StaticOptions:
    quant_format: str = "qoperator"  # or "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = False
    calibrate_method: str = "minmax"  # entropy, percentile
    exclude: tuple[str, ...] = ()


def check_not_quantized(proto, path) -> None:
    from shipyard.quantize.onnx_weights import graphs, int8_weight_casts

    found = sorted({n.op_type for n in proto.graph.node} & QUANTIZED_OPS)
    if not found and any(int8_weight_casts(g) for g in graphs(proto.graph)):
        found = ["int8 weights cast to float"]
    if found:
        raise UsageError(f"{path}: the model is already quantized (it has {', '.join(found)} nodes)",
                         hint="quantize the float model it came from")


def quantized_op_count(path: Path, compute: bool = False) -> int:
    """Quantized nodes in the model, subgraphs included: 0 when the quantizer changed nothing.
    ``compute``: only what computes in integers — QLinear*/*Integer/QGemm nodes, or in the QDQ
    form a DequantizeLinear of an int8 weight — not the Quantize/DequantizeLinear pairs that a
    model whose every computing node stayed float may still carry. int8 weights cast to float
    (weight-only int8) count either way: that model's point is its int8 storage."""
    import onnx

    from shipyard.quantize.onnx_weights import int8_weight_casts

    def count(graph) -> int:
        weights = {i.name for i in graph.initializer}
        total = int8_weight_casts(graph)  # weight-only int8: computes in float, but stores int8
        for n in graph.node:
            if compute:
                total += (n.op_type.startswith("QLinear") or n.op_type in QUANTIZED_OPS - {"QuantizeLinear", "DequantizeLinear"}
                          or (n.op_type == "DequantizeLinear" and bool(n.input) and n.input[0] in weights))
            else:
                total += n.op_type in QUANTIZED_OPS
            total += sum(count(a.g) for a in n.attribute if a.type == a.GRAPH)
            total += sum(count(g) for a in n.attribute if a.type == a.GRAPHS for g in a.graphs)
        return total

    return count(onnx.load(str(path), load_external_data=False).graph)


def check_exclude(proto, exclude) -> None:
    names = {n.name for n in proto.graph.node}
    unknown = [e for e in exclude if e not in names]
    if unknown:
        sample = ", ".join(sorted(names)[:8])
        raise UsageError(f"--exclude: no node named {', '.join(unknown)} in the model", hint=f"node names look like: {sample}")


def lifted_path(workdir: Path) -> Path:
    """Where ``prepare`` leaves the model with its weights lifted but not otherwise optimized."""
    return workdir / "lifted.onnx"


def weights_source(prepared: Path) -> Path:
    """What weight-only int8 quantizes: the prepared model or, when onnxruntime's pre-processing grew
    it (silero-vad: +8%), the merely lifted one. Folded batch norms leave the file smaller (PP-OCR's
    classifier: 0.38x instead of 0.44x) and change no per-channel rounding."""
    lifted = lifted_path(prepared.parent)
    if prepared != lifted and lifted.exists() and lifted.stat().st_size < prepared.stat().st_size:
        return lifted
    return prepared


def prepare(proto, workdir: Path, optimize: bool = True) -> Path:
    """Lift Constant-node weights into initializers (Paddle exports keep weights in Constants,
    which the quantizer does not see), then onnxruntime's pre-processing: graph optimization
    (batch-norm folding) and shape inference."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    from shipyard.passes.onnx_passes import lift_constants_proto

    lifted = proto
    if any(n.op_type == "Constant" for n in proto.graph.node):
        lifted = lift_constants_proto(proto)
        del lifted.graph.value_info[:]  # shape inference recomputes them for the new initializers
    src = lifted_path(workdir)
    onnx.save(lifted, str(src))
    if not optimize:
        return src
    out = workdir / "prepared.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 -- pre-processing is an optimisation: a model it cannot handle is quantized as it is
        return src
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)

    def __len__(self):
        return len(self._feeds)


def _reader(feeds):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds)


CALIBRATION_CHUNK = 4  # samples per calibrator pass (memory: see calibrate_to_cache)


def calibrate_to_cache(model: Path, feeds: list[dict], method: str, cache: Path) -> None:
    """Calibrate ``model`` with onnxruntime's own calibrator and save the ranges to ``cache`` in
    the format its ``quantize_static`` reads back (every trial of the search reuses them)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from shipyard.deps import all_output_silenced

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    ops = list(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    with tempfile.TemporaryDirectory() as tmp, _root_log_level(logging.ERROR), all_output_silenced():
        calibrator = create_calibrator(Path(model), ops, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=methods[method], extra_options={"moving_average": False})
        # a few samples at a time: the histogram calibrators (entropy, percentile) keep every
        # intermediate tensor of what they are given (PP-OCR det, 40 samples of 288x480: ~10 GB,
        # killed by the OOM killer); MinMax merges its ranges after each call, histograms accumulate
        for start in range(0, len(feeds), CALIBRATION_CHUNK):
            calibrator.collect_data(_reader(feeds[start:start + CALIBRATION_CHUNK]))
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator


def quantize_static(src: Path, out: Path, feeds: list[dict], opts: StaticOptions, cache: Path | None = None) -> dict:
    """onnxruntime's quantize_static. ``cache``: a calibration cache file (per calibration
    method) that the search's trials share, so the float model is calibrated once."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    from shipyard.deps import all_output_silenced

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    proto = onnx.load(str(src), load_external_data=False)
    keep_float = [n.name for n in proto.graph.node if n.op_type in KEEP_FLOAT_OPS]
    if cache is not None and not cache.exists():
        # calibrated here a few samples at a time, not by quantize_static all at once (memory)
        try:
            calibrate_to_cache(src, feeds, opts.calibrate_method, cache)
        except Exception:  # noqa: BLE001 -- quantize_static calibrates (and reports any error) as before
            cache.unlink(missing_ok=True)
    # The quantizer logs every tensor it skips on the root logger and the histogram
    # calibrators print their settings: neither is for the user, and --json needs a clean stdout.
    with _root_log_level(logging.ERROR), all_output_silenced():
        ort_static(
            str(src), str(out), _reader(feeds),
            quant_format=QuantFormat.QOperator if opts.quant_format == "qoperator" else QuantFormat.QDQ,
            per_channel=opts.per_channel,
            activation_type=types[opts.activation_type], weight_type=types[opts.weight_type],
            nodes_to_exclude=list(opts.exclude) + keep_float,
            calibrate_method=methods[opts.calibrate_method],
            extra_options={"CalibMovingAverage": False},
            calibration_cache_path=cache,
        )
    return {"format": opts.quant_format.upper() if opts.quant_format == "qdq" else "QOperator",
            "activations": opts.activation_type, "weights": opts.weight_type, "per_channel": opts.per_channel,
            "calibration_method": opts.calibrate_method, "kept_float": keep_float + list(opts.exclude)}


@contextlib.contextmanager
def _root_log_level(level: int):
    """onnxruntime.quantization warns through the root logger, which only a level silences."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(old)


def variants(first: StaticOptions) -> list[StaticOptions]:
    """The settings the accuracy search tries, fastest first: the requested ones, then
    per-channel weights, percentile calibration (clips outliers), and the QDQ form with
    int8 activations (no faster on x86, sometimes more accurate)."""
    out = [first]
    for change in ({"per_channel": True}, {"per_channel": True, "calibrate_method": "percentile"},
                   {"per_channel": True, "quant_format": "qdq", "activation_type": "int8"}):
        v = StaticOptions(**{**first.__dict__, **change})
        if v not in out:
            out.append(v)
    return out


def quantizable_nodes(path: Path, opts: StaticOptions) -> tuple[dict[str, str], dict[str, list[str]],
                                                                  dict[str, int | None]]:
    """({node name: op type}, {node: the candidates feeding it}, {node: FLOPs, None where shapes are
    unknown}) of the nodes onnxruntime would quantize in this form: the candidates for keeping in
    float, and what keeping each costs (the search's float share). Every kind counts (Concat,
    Reshape, Sigmoid, Add...)."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from shipyard.formats.onnx import flops_by_node

    kinds = set(QDQRegistry if opts.quant_format == "qdq" else QLinearOpsRegistry) - KEEP_FLOAT_OPS
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    nodes = {n.name: n.op_type for n in graph.node if n.op_type in kinds and n.name and n.name not in opts.exclude}
    producer = {o: n.name for n in graph.node for o in n.output}
    feeds = {n.name: [producer[i] for i in n.input if producer.get(i) in nodes] for n in graph.node if n.name in nodes}
    flops = flops_by_node(proto)
    return nodes, feeds, {n: flops.get(n) for n in nodes}


def quantize_dynamic(src: Path, out: Path, per_channel: bool, exclude) -> dict:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    # EnableSubgraph: weights inside If/Loop bodies too (silero-vad keeps all of them there); dynamic
    # quantization needs no calibrated ranges, which onnxruntime's calibrator cannot take inside subgraphs
    ort_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QUInt8,
                nodes_to_exclude=list(exclude), extra_options={"EnableSubgraph": True})
    return {"format": "dynamic (activations quantized at run time)", "weights": "uint8", "per_channel": per_channel}


def quantize_weights_only(src: Path, out: Path, minimum_size: int, exclude,
                          means: dict[str, np.ndarray] | None = None) -> int:
    """Weight-only int8 (``onnx_weights``) of ``src`` into ``out``, but the weights of the nodes in
    ``exclude``; ``means``: per-channel input means of the convolutions on real data, for bias
    correction (None: none). Returns how many weights were stored as int8."""
    import onnx

    from shipyard.quantize.onnx_weights import graphs, quantize_weights

    proto = onnx.load(str(src))
    names = set(exclude)
    weights = {i for g in graphs(proto.graph) for n in g.node if n.name in names for i in n.input}
    count = quantize_weights(proto, minimum_size, exclude=weights, means=means)
    onnx.save(proto, str(out))
    return count


def to_float16(src: Path, out: Path, exclude) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=list(exclude) or None)
    onnx.save(proto, str(out))
    return {"format": "float16 weights and compute, float32 inputs/outputs"}


def layer_errors(float_path: Path, feeds: list[dict], opts: StaticOptions, top: int = 5) -> list[dict]:
    """Per-layer signal-to-quantization-noise ratio (dB) of the QDQ-quantized model against the
    float one (onnxruntime's qdq_loss_debug), ranked by how much each layer lowers it."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    qdq = StaticOptions(**{**opts.__dict__, "quant_format": "qdq"})
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        quantize_static(float_path, t / "qdq.onnx", feeds, qdq)
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(t / "float_aug.onnx"))
        dbg.modify_model_output_intermediate_tensors(str(t / "qdq.onnx"), str(t / "qdq_aug.onnx"))
        float_acts = dbg.collect_activations(str(t / "float_aug.onnx"), _reader(feeds))
        qdq_acts = dbg.collect_activations(str(t / "qdq_aug.onnx"), _reader(feeds))
        errors = dbg.compute_activation_error(dbg.create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(str(float_path)).graph
    sqnr = {t: float(e["xmodel_err"]) for t, e in errors.items()
            if e.get("xmodel_err") is not None and np.isfinite(e["xmodel_err"])}
    producer = {o: n for n in graph.node for o in n.output}
    memo: dict[str, list[float]] = {}

    def measured_upstream(tensor: str) -> list[float]:
        """SQNRs of the nearest measured tensors feeding ``tensor`` (through fused, unmeasured ops)."""
        if tensor in sqnr:
            return [sqnr[tensor]]
        if tensor not in memo:
            memo[tensor] = []
            node = producer.get(tensor)
            memo[tensor] = [v for i in (node.input if node is not None else []) for v in measured_upstream(i)]
        return memo[tensor]

    rows = []
    for node in graph.node:
        out = next((o for o in node.output if o in sqnr), None)
        if out is None:
            continue
        before = [v for i in node.input for v in measured_upstream(i)]
        # the noise this layer adds: how much the signal-to-noise ratio falls across it
        drop = min(before) - sqnr[out] if before else None
        name, op = node.name, node.op_type
        fused = producer.get(node.input[0]) if node.input and node.input[0] not in sqnr else None
        if op in ("Relu", "Clip", "LeakyRelu", "Sigmoid") and fused is not None and fused.op_type in ("Conv", "Gemm", "MatMul"):
            name, op = fused.name, f"{fused.op_type}+{op}"  # quantized as one layer; exclude the conv
        rows.append({"node": name, "op": op, "tensor": out, "sqnr_db": sqnr[out], "drop_db": drop})
    rows.sort(key=lambda r: (-(r["drop_db"] if r["drop_db"] is not None else 0.0), r["sqnr_db"]))
    return rows[:top]
