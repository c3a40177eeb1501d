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
from shipyard.convert import onnx_tf, tf_edges, torch_edges
from shipyard.convert.options import ConvertOptions
from shipyard.errors import UnsupportedError, UsageError
from shipyard.model import Model

TARGETS = {
    "onnx": "onnx", "tflite": "tflite", "tfjs": "tfjs", "tf-savedmodel": "tf-savedmodel",
    "savedmodel": "tf-savedmodel", "saved_model": "tf-savedmodel", "keras": "keras",
    "torchscript": "torchscript", "tf-graphdef": "tf-graphdef", "graphdef": "tf-graphdef", "pb": "tf-graphdef",
}
DIRECTORY_TARGETS = {"tfjs", "tf-savedmodel"}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tf-graphdef": ".pb", "keras": ".keras", "torchscript": ".pt"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    run: Callable[[Model, Path, ConvertOptions], Model]
    tool: str


EDGES = [
    Edge("keras", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants_v2)"),
    Edge("tf-savedmodel", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants_v2)"),
    Edge("tf-checkpoint", "tf-graphdef", tf_edges.to_graphdef, "freeze (convert_variables_to_constants)"),
    Edge("tf-graphdef", "onnx", tf_edges.graphdef_to_onnx, "tf2onnx"),
    Edge("tf-graphdef", "tflite", tf_edges.graphdef_to_tflite, "TFLiteConverter"),
    Edge("tf-graphdef", "tfjs", tf_edges.graphdef_to_tfjs, "shipyard TF.js graph-model writer"),
    Edge("tf-graphdef", "tf-savedmodel", tf_edges.graphdef_to_savedmodel, "tf.saved_model.save"),
    Edge("keras", "tf-savedmodel", tf_edges.keras_to_savedmodel, "keras Model.export"),
    Edge("keras", "keras", tf_edges.keras_to_keras, "keras Model.save"),
    Edge("tflite", "onnx", tf_edges.tflite_to_onnx, "tf2onnx (tflite)"),
    Edge("torchscript", "onnx", torch_edges.to_onnx, "torch.onnx.export"),
    Edge("torch-module", "torchscript", torch_edges.to_torchscript, "torch.jit.trace"),
    Edge("torch-module", "onnx", torch_edges.to_onnx, "torch.onnx.export"),
    Edge("onnx", "tflite", onnx_tf.onnx_to_tflite, "onnx2tf"),
    Edge("onnx", "tf-savedmodel", onnx_tf.onnx_to_savedmodel, "onnx2tf"),
]

# Reasons shown when no chain exists between two formats (none today: each pair that lacked a
# converter has one now; keep the table for the next one).
MISSING: dict[tuple[str, str], str] = {}


def target_format(name: str) -> str:
    fmt = TARGETS.get(name.lower())
    if fmt is None:
        raise UsageError(f"unknown target format '{name}'", hint=f"targets: {', '.join(sorted(set(TARGETS.values())))}")
    return fmt


def plan(src: str, dst: str) -> list[Edge]:
    """The shortest chain of edges from ``src`` to ``dst``."""
    if src == dst and dst != "keras":
        raise UsageError(f"the model is already {dst}")
    queue: deque[tuple[str, list[Edge]]] = deque([(src, [])])
    seen = {src}
    while queue:
        fmt, path = queue.popleft()
        for edge in EDGES:
            if edge.src != fmt:
                continue
            if edge.dst == dst:
                return path + [edge]
            if edge.dst not in seen:
                seen.add(edge.dst)
                queue.append((edge.dst, path + [edge]))
    reason = MISSING.get((src, dst))
    reachable = sorted(reachable_from(src))
    raise UnsupportedError(
        f"no conversion from {src} to {dst}" + (f": {reason}" if reason else ""),
        hint=f"from {src} shipyard reaches: {', '.join(reachable) or 'nothing'}",
    )


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
