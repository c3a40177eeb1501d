"""Conversion edges and the planner that chains them when there is no direct one.

The planner is a breadth-first search over (source format -> target format) edges, so it
always takes the shortest chain and says which one it took.
"""
from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipyard import guard
from shipyard.convert import onnx_tf, openvino_edges, tf_edges, torch_edges, torch_tflite
from shipyard.convert.options import ConvertOptions
from shipyard.errors import UnsupportedError, UsageError
from shipyard.formats import registry
from shipyard.model import Model

TARGETS = {
    "onnx": "onnx", "tflite": "tflite", "tfjs": "tfjs", "tf-savedmodel": "tf-savedmodel",
    "savedmodel": "tf-savedmodel", "saved_model": "tf-savedmodel", "keras": "keras",
    "torchscript": "torchscript", "tf-graphdef": "tf-graphdef", "graphdef": "tf-graphdef", "pb": "tf-graphdef",
    "memmapped": "tf-memmapped", "tf-memmapped": "tf-memmapped", "mmpb": "tf-memmapped",
    "openvino": "openvino-ir", "openvino-ir": "openvino-ir", "ir": "openvino-ir",
}
# The names `convert --help` and its errors show (one per format; the others in TARGETS are aliases).
TARGET_NAMES = ("onnx", "tflite", "tfjs", "savedmodel", "keras", "torchscript", "pb", "memmapped", "openvino")
SUFFIX = registry.suffixes()  # format -> the suffix of an intermediate file (formats/registry.py)


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    run: Callable[[Model, Path, ConvertOptions], Model]
    tool: str
    via: str = ""  # the route's name for --via, where several converters reach the same format
    available: Callable[[], bool] | None = None  # an optional converter: skipped by default when absent


EDGES = [
    Edge("keras", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants_v2)"),
    Edge("tf-savedmodel", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants_v2)"),
    Edge("tf-checkpoint", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants)"),
    Edge("tf-graphdef", "onnx", tf_edges.graphdef_to_onnx, "tf2onnx"),
    Edge("tf-graphdef", "tflite", tf_edges.graphdef_to_tflite, "TFLiteConverter"),
    Edge("tf-graphdef", "tfjs", tf_edges.graphdef_to_tfjs, "shipyard TF.js graph-model writer"),
    Edge("tf-graphdef", "tf-savedmodel", tf_edges.graphdef_to_savedmodel, "tf.saved_model.save"),
    Edge("tf-graphdef", "tf-memmapped", tf_edges.graphdef_to_memmapped,
         "shipyard memmapped writer (convert_graphdef_memmapped_format's layout)"),
    Edge("keras", "tf-savedmodel", tf_edges.keras_to_savedmodel, "keras Model.export"),
    Edge("keras", "keras", tf_edges.keras_to_keras, "keras Model.save"),
    Edge("tflite", "onnx", tf_edges.tflite_to_onnx, "tf2onnx (tflite)"),
    Edge("torchscript", "onnx", torch_edges.to_onnx, "torch.onnx.export"),
    Edge("torch-module", "torchscript", torch_edges.to_torchscript, "torch.jit.trace"),
    Edge("torch-module", "onnx", torch_edges.to_onnx, "torch.onnx.export"),
    Edge("torch-export", "onnx", torch_edges.program_to_onnx, "torch.onnx.export (dynamo)"),
    # PyTorch -> TFLite in one step, in litert-torch's own environment (convert/torch_tflite.py)
    Edge("torch-module", "tflite", torch_tflite.to_tflite, "litert-torch", "litert-torch", torch_tflite.available),
    Edge("torch-export", "tflite", torch_tflite.to_tflite, "litert-torch", "litert-torch", torch_tflite.available),
    Edge("onnx", "tflite", onnx_tf.onnx_to_tflite, "onnx2tf", "onnx2tf"),
    Edge("onnx", "tf-savedmodel", onnx_tf.onnx_to_savedmodel, "onnx2tf", "onnx2tf"),
    # OpenVINO reads these four itself (convert/openvino_edges.py); Keras goes through its frozen graph
    Edge("onnx", "openvino-ir", openvino_edges.to_ir, "OpenVINO (convert_model)"),
    Edge("tflite", "openvino-ir", openvino_edges.to_ir, "OpenVINO (convert_model)"),
    Edge("tf-savedmodel", "openvino-ir", openvino_edges.to_ir, "OpenVINO (convert_model)"),
    Edge("tf-graphdef", "openvino-ir", openvino_edges.to_ir, "OpenVINO (convert_model)"),
]

# Reasons shown when no chain exists between two formats (none today: each pair that lacked a
# converter has one now; keep the table for the next one).
MISSING: dict[tuple[str, str], str] = {}


def target_format(name: str) -> str:
    fmt = TARGETS.get(name.lower())
    if fmt is None:
        from shipyard.cliargs import did_you_mean

        raise UsageError(f"unknown target format '{name}'{did_you_mean(name.lower(), TARGETS)}",
                         hint=f"targets: {', '.join(TARGET_NAMES)}")
    return fmt


def plan(src: str, dst: str, via: str | None = None) -> list[Edge]:
    """The shortest chain of edges from ``src`` to ``dst``; with ``via``, the shortest one that
    takes that route. Without it an optional converter that is not installed is passed over."""
    if src == dst and dst != "keras":
        raise UsageError(f"the model is already {dst}")
    routes = {e.via for e in EDGES if e.via}
    if via is not None and via not in routes:
        raise UsageError(f"unknown route '{via}'", hint=f"routes: {', '.join(sorted(routes))}")
    found = _search(src, dst, via)
    if found is not None:
        return found
    if via is not None:
        found_routes = [r for r in sorted(routes) if _search(src, dst, r) is not None]
        raise UnsupportedError(f"no conversion from {src} to {dst} through {via}",
                               hint="leave out --via to take the default route" +
                                    (f" (routes from {src} to {dst}: {', '.join(found_routes)})" if found_routes else ""))
    reason = MISSING.get((src, dst))
    reachable = sorted(reachable_from(src))
    raise UnsupportedError(
        f"no conversion from {src} to {dst}" + (f": {reason}" if reason else ""),
        hint=f"from {src} shipyard reaches: {', '.join(reachable) or 'nothing'}",
    )


def _search(src: str, dst: str, via: str | None) -> list[Edge] | None:
    """Breadth-first over (format, route taken yet) states."""
    queue: deque[tuple[str, bool, list[Edge]]] = deque([(src, via is None, [])])
    seen = {(src, via is None)}
    while queue:
        fmt, taken, path = queue.popleft()
        for edge in EDGES:
            if edge.src != fmt or (via is None and edge.available is not None and not edge.available()):
                continue
            now = taken or edge.via == via
            if edge.dst == dst and now:
                return path + [edge]
            if (edge.dst, now) not in seen:
                seen.add((edge.dst, now))
                queue.append((edge.dst, now, path + [edge]))
    return None


def reachable_from(src: str) -> set[str]:
    out, frontier = set(), [src]
    while frontier:
        fmt = frontier.pop()
        for edge in EDGES:
            if edge.src == fmt and edge.dst not in out:
                out.add(edge.dst)
                frontier.append(edge.dst)
    return out - {src}


def run_plan(src: Model, edges: list[Edge], out: Path, opts: ConvertOptions) -> Model:
    """Apply the chain; intermediate artifacts live in a temporary directory."""
    current = src
    with tempfile.TemporaryDirectory(prefix="shipyard-convert-") as work:
        for i, edge in enumerate(edges):
            last = i == len(edges) - 1
            target = out if last else Path(work) / f"step{i}{SUFFIX.get(edge.dst, '')}"
            guard.stage(f"converting {current.format} -> {edge.dst} with {edge.tool}")
            current = edge.run(current, target, opts)
    return current
