"""The graph-session workflow: train and predict from a graph file with no Python model code.

This is how C/C++ programs use TensorFlow through its C API: load a GraphDef (or a
``.meta``), find the init op, the train op and the saver's filename tensor / save op /
restore op by name, then run ops and fetch tensors in a session. ``GraphSession`` finds
those names (from the ``.meta`` saver_def, or by the patterns tf.train.Saver uses) and
runs the steps in order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.deps import require
from shipyard.errors import InputError, ModelLoadError, UsageError, engine_message
from shipyard.formats import tf_graph, tf_protos
from shipyard.model import Model, tensor_name

# What optimizer.minimize() returns: a grouping NoOp, or the global-step increment.
_TRAIN_OP_TYPES = {"NoOp", "AssignAdd", "AssignAddVariableOp"}
# What the workflow loads: a GraphDef, or a checkpoint's .meta graph (both with their variables).
SESSION_FORMATS = ("tf-graphdef", "tf-checkpoint")


def check_session_model(model: Model, shown: str | Path | None = None) -> None:
    """Refuse a model the session workflow (``shipyard session``, ``cpp --workflow session``) cannot load."""
    if model.format not in SESSION_FORMATS:
        from shipyard.report.numbers import a

        raise UsageError(f"{shown or model.path}: {a(model.format)} model; the session workflow needs a GraphDef or .meta")


@dataclass
class GraphRoles:
    init_op: str | None
    train_ops: list[str]
    saver: dict[str, str] | None  # filename_tensor, save_op, restore_op
    inputs: list[str]
    outputs: list[str]

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def find_roles(graph_def, meta=None) -> GraphRoles:
    by_name = {n.name: n for n in graph_def.node}
    consumed = {ref.lstrip("^").split(":")[0] for n in graph_def.node for ref in n.input}
    init = next((n for n in ("init", "init_all_vars_op") if n in by_name), None)
    train: list[str] = []
    if meta is not None and "train_op" in meta.collection_def:
        train = [tensor_name(v).split(":")[0] for v in meta.collection_def["train_op"].node_list.value]
    if not train:
        for node in graph_def.node:
            if node.name in consumed or node.name.startswith(("save", "init")) or node.op not in _TRAIN_OP_TYPES:
                continue
            feeders = [by_name.get(ref.lstrip("^").split(":")[0]) for ref in node.input]
            if any(f is not None and tf_graph._TRAINING_OP.match(f.op) for f in feeders):
                train.append(node.name)
    saver = None
    if meta is not None and meta.HasField("saver_def"):
        sd = meta.saver_def
        saver = {"filename_tensor": sd.filename_tensor_name, "save_op": sd.save_tensor_name, "restore_op": sd.restore_op_name}
    elif "save/restore_all" in by_name and "save/Const" in by_name:
        save = "save/control_dependency" if "save/control_dependency" in by_name else "save/SaveV2"
        saver = {"filename_tensor": "save/Const:0", "save_op": f"{save}:0", "restore_op": "save/restore_all"}
    inputs, outputs = tf_graph.detect_io(graph_def)
    return GraphRoles(init, train, saver, [n.name for n in inputs], [n.name for n in outputs])


@dataclass
class StepResult:
    step: str
    target: str
    seconds: float
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "target": self.target, "seconds": round(self.seconds, 4), **self.values}


class GraphSession:
    """A v1 Session over a graph file, driven by named steps."""

    def __init__(self, model: Model):
        self.tf = tf = require("tensorflow", "Running a graph session")
        path = model.extras.get("meta", model.path)
        graph_def, meta = tf_protos.parse_graph_file(path)
        self.roles = find_roles(graph_def, meta)
        self.graph = tf.Graph()
        try:
            with self.graph.as_default():
                tf.import_graph_def(tf.compat.v1.GraphDef.FromString(graph_def.SerializeToString()), name="")
        except (ValueError, tf.errors.OpError) as exc:
            raise ModelLoadError(f"{path}: TensorFlow cannot import the graph: {engine_message(exc)}") from exc
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.fetched: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self.session.close()

    def _saver(self) -> dict[str, str]:
        if self.roles.saver is None:
            raise UsageError("this graph has no saver ops (save/Const, save/restore_all)",
                             hint="create a tf.compat.v1.train.Saver() before writing the graph")
        return self.roles.saver

    def _op(self, name: str) -> str:
        node = tensor_name(name).split(":")[0]
        try:
            self.graph.get_operation_by_name(node)
        except KeyError as exc:
            import difflib

            close = difflib.get_close_matches(node, [o.name for o in self.graph.get_operations()], n=3)
            raise InputError(f"the graph has no op named '{node}'" + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")) from exc
        return name

    def restore(self, checkpoint: str) -> StepResult:
        from shipyard.sniff import open_model

        prefix = open_model(checkpoint).path if Path(checkpoint).is_dir() or Path(checkpoint + ".index").exists() else Path(checkpoint)
        saver = self._saver()
        start = time.perf_counter()
        try:
            self.session.run(saver["restore_op"], {saver["filename_tensor"]: str(prefix)})
        except self.tf.errors.OpError as exc:
            raise ModelLoadError(f"the checkpoint {prefix} does not match the graph: {engine_message(exc)}") from exc
        return StepResult("restore", str(prefix), time.perf_counter() - start)

    def init(self) -> StepResult:
        if self.roles.init_op is None:
            raise UsageError("this graph has no init op named 'init'", hint="run the initialiser op by name with --run")
        start = time.perf_counter()
        self.session.run(self.roles.init_op)
        return StepResult("init", self.roles.init_op, time.perf_counter() - start)

    def restore_or_init(self, directory: str) -> StepResult:
        if (Path(directory) / "checkpoint").is_file():
            return self.restore(directory)
        return self.init()

    def run_op(self, spec: str, feeds: dict[str, np.ndarray]) -> StepResult:
        name, _, count = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() and ":" in spec else (spec, "", "1")
        times = int(count)
        self._op(name)
        feed = self._feed(feeds)
        start = time.perf_counter()
        try:
            for _ in range(times):
                self.session.run(name, feed)
        except self.tf.errors.OpError as exc:
            raise InputError(f"running '{name}' failed: {engine_message(exc)}") from exc
        return StepResult("run", f"{name} x{times}", time.perf_counter() - start)

    def _value_of(self, tensor: str):
        """The tensor to fetch for a name: a resource variable's handle (``VarHandleOp``) is read
        with a ReadVariableOp added to the in-memory graph, so ``--fetch w1`` gives the variable's
        values, not the handle (a ``void`` scalar)."""
        t = self.graph.get_tensor_by_name(tensor if ":" in tensor else f"{tensor}:0")
        if t.dtype != self.tf.resource:
            return t
        if t.op.type != "VarHandleOp":
            raise InputError(f"'{tensor}' is a resource handle ({t.op.type}), not a value",
                             hint="fetch the variable (its VarHandleOp) or a tensor computed from it")
        with self.graph.as_default():
            return self.tf.raw_ops.ReadVariableOp(resource=t, dtype=t.op.get_attr("dtype"),
                                                  name=f"{t.op.name}/shipyard_read")

    def fetch(self, tensor: str, feeds: dict[str, np.ndarray]) -> StepResult:
        self._op(tensor)
        start = time.perf_counter()
        try:
            value = self.session.run(self._value_of(tensor), self._feed(feeds))
        except self.tf.errors.OpError as exc:
            raise InputError(f"fetching '{tensor}' failed: {engine_message(exc)}") from exc
        value = np.asarray(value)
        self.fetched[f"{len(self.fetched)}:{tensor}"] = value
        from shipyard.report.text import array_stats

        return StepResult("fetch", tensor, time.perf_counter() - start, array_stats(value))

    def save(self, prefix: str) -> StepResult:
        saver = self._saver()
        target = Path(prefix).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.session.run(saver["save_op"], {saver["filename_tensor"]: str(target)})
        # What tf.train.Saver.save adds in Python: the state file naming the latest checkpoint.
        (target.parent / "checkpoint").write_text(
            f'model_checkpoint_path: "{target.name}"\nall_model_checkpoint_paths: "{target.name}"\n'
        )
        return StepResult("save", str(target), time.perf_counter() - start)

    def _feed(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {(k if ":" in k else f"{k}:0"): v for k, v in feeds.items()}
