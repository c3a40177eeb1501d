"""Per-op time from each engine's own profiler: onnxruntime's JSON trace and TensorFlow's
step stats, OpenVINO's performance counters, LiteRT's op profiler (through its C API)."""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WARMUP = 3  # profiled runs discarded: first runs pay for allocation and kernel selection


@dataclass
class OpTime:
    """One op type's share of a profiled run."""

    op: str
    total_ms: float   # summed over the profiled runs, divided by their number (per run)
    calls: int        # per run
    share: float      # of the summed op time


def _table(times_us: dict[str, float], calls: dict[str, int], runs: int):
    total = sum(times_us.values()) or 1.0
    rows = [OpTime(op, t / runs / 1e3, calls[op] // runs, t / total) for op, t in times_us.items()]
    return sorted(rows, key=lambda r: r.total_ms, reverse=True)


def profile_ops(config, feeds: dict[str, np.ndarray], runs: int):
    """``(rows, note)``: per-op-type time per run, sorted by time, or ``(None, why not)``."""
    from shipyard.formats import registry
    from shipyard.inspection import as_model
    from shipyard.runtimes import DEFAULT_BACKEND, backend_name

    model = as_model(config.model)
    backend = backend_name(config.backend) if config.backend else DEFAULT_BACKEND[model.format]
    # Which engines' profilers see a format's ops is declared with the format (``profilers``).
    if backend in registry.get(model.format).profilers:
        profiler = {"onnxruntime": _onnxruntime, "openvino": _openvino, "tensorflow": _tensorflow,
                    "litert": _litert}[backend]
        return profiler(model, config.threads, feeds, runs), None
    why = {"torch": "TorchScript runs as one fused call; use torch.profiler on the eager module",
           "tensorflow": "Keras/SavedModel functions run as one call; freeze to a GraphDef for per-op times"}
    return None, why.get(backend, "no profiler for this backend")


def _litert(model, threads, feeds, runs):
    """LiteRT's own op profiler (XNNPACK's operators as it ran them), through libLiteRt's C API:
    see runtimes/litert_profile.py."""
    from shipyard.runtimes.litert_profile import op_rows, profile_summary

    summary = profile_summary(str(model.path), feeds, runs, threads=threads, warmup=WARMUP)
    rows = [OpTime(op, ms, calls, share) for op, ms, calls, share in op_rows(summary, runs)]
    return sorted(rows, key=lambda r: r.total_ms, reverse=True)


def _onnxruntime(model, threads, feeds, runs):
    import onnxruntime as ort

    from shipyard.runtimes.ort import OnnxRuntimeRunner

    with tempfile.TemporaryDirectory(prefix="shipyard-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        with OnnxRuntimeRunner(model, threads=threads, session_options=opts) as runner:
            for _ in range(WARMUP + runs):
                runner.run(feeds)
            trace = runner.session.end_profiling()
        events = json.loads(Path(trace).read_text())
    # The profiler records from the session's creation: skip the first (cold) runs.
    starts = sorted(ev["ts"] for ev in events if ev.get("name") == "model_run")
    cutoff = starts[WARMUP] if len(starts) > WARMUP else 0
    times: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.get("ts", 0) < cutoff:
            continue
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            times[op] += float(ev.get("dur", 0))
            calls[op] += 1
    return _table(times, calls, runs)


def _openvino(model, threads, feeds, runs):
    """OpenVINO's per-node counters (PERF_COUNT), summed by the executed node's type."""
    from shipyard.runtimes.openvino import OpenVINORunner

    times: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    with OpenVINORunner(model, threads=threads, profile=True) as runner:
        for _ in range(WARMUP):
            runner.run(feeds)
        for _ in range(runs):
            runner.run(feeds)
            for op, us in runner.profiling():
                times[op] += us
                calls[op] += 1
    return _table(times, calls, runs)


def _kernel(label: str, fallback: str) -> str:
    """The op type that really ran, from a step's timeline label (``Relu = _MklNativeFusedConv2D(...)``):
    Grappler fuses and constant-folds, so the graph's op type of the node name is often not it."""
    _, sep, call = label.partition(" = ")
    kernel = call.split("(", 1)[0].strip() if sep else ""
    for prefix in ("_MklNative", "_Mkl", "_"):
        if kernel.startswith(prefix) and len(kernel) > len(prefix):
            kernel = kernel[len(prefix):]
            break
    return kernel or fallback


def _fused_parts(name: str, graph_ops: dict, executed: set[str]) -> list[str]:
    """The graph's ops a fused kernel named after ``name`` replaced: ``name`` and the chain of its
    first inputs that never ran on their own (Conv2D -> BiasAdd -> Relu)."""
    parts, current, seen = [], name, set()
    while current in graph_ops and current not in seen:
        seen.add(current)
        op = graph_ops[current]
        parts.append(op.type)
        inputs = [t.op.name for t in op.inputs
                  if t.op.type not in ("Const", "Identity", "ReadVariableOp", "Placeholder", "PlaceholderWithDefault")]
        nxt = inputs[0] if inputs else None
        if nxt is None or nxt in executed:
            break
        current = nxt
    return parts[::-1]


def _tensorflow(model, threads, feeds, runs):
    """TensorFlow's step stats per executed kernel: a fused kernel is one row naming its parts
    (``FusedConv2D (Conv2D+BiasAdd+Relu)``), not charged to the last op's node name."""
    from shipyard.runtimes.tensorflow import TensorFlowRunner, tf_name

    with TensorFlowRunner(model, threads=threads) as runner:
        tf = runner.tf
        session = runner._session
        graph_ops = {op.name: op for op in session.graph.get_operations()}
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        fetches = [tf_name(o.name) for o in runner.signature.outputs]
        feed_dict = {tf_name(k): v for k, v in feeds.items()}
        times: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        for _ in range(WARMUP):
            session.run(fetches, feed_dict, options=options)
        labels: dict[str, str] = {}
        for _ in range(runs):
            meta = tf.compat.v1.RunMetadata()
            session.run(fetches, feed_dict, options=options, run_metadata=meta)
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    name = node.node_name.split(":")[0]
                    if name not in graph_ops:  # _SOURCE / _SINK, _Arg/_Retval and device bookkeeping
                        continue
                    if name not in labels:
                        labels[name] = _kernel(node.timeline_label, graph_ops[name].type)
                    kernel = labels[name]
                    times[name] += float(node.op_end_rel_micros - node.op_start_rel_micros)
                    calls[name] += 1
    executed = set(labels)
    by_kernel: dict[str, float] = defaultdict(float)
    kernel_calls: dict[str, int] = defaultdict(int)
    for name, us in times.items():
        kernel = labels[name]
        if kernel.startswith("Fused") and kernel != graph_ops[name].type:
            parts = _fused_parts(name, graph_ops, executed)
            if len(parts) > 1:
                kernel = f"{kernel} ({'+'.join(parts)})"
        by_kernel[kernel] += us
        kernel_calls[kernel] += calls[name]
    return _table(by_kernel, kernel_calls, runs)
