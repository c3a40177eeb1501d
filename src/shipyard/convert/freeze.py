"""Freezing: variables become constants, only what the outputs need is kept, devices cleared.

What TensorFlow's freeze_graph tool did, without bazel, and for TF2 sources too: a
GraphDef or ``.meta`` plus a checkpoint, a SavedModel signature, or a Keras model.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from shipyard.deps import require
from shipyard.errors import ModelLoadError, UsageError, engine_message
from shipyard.formats import tf_graph, tf_protos
from shipyard.formats.tf_freeze import check_outputs, prune_for_inference, to_tb
from shipyard.model import Model, Signature, tensor_name


class LiveGraph:
    """A GraphDef (or .meta) with its variables restored from a checkpoint, in a v1 Session.

    Used to freeze, and as the reference a frozen graph is verified against.
    """

    def __init__(self, graph_path: Path | None, checkpoint: Path, meta: Path | None = None):
        self.tf = tf = require("tensorflow", "Restoring a checkpoint")
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                if meta is not None:
                    saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
                    saver.restore(self.session, str(checkpoint))
                else:
                    gd, _ = tf_protos.parse_graph_file(graph_path)
                    tf.import_graph_def(tf.compat.v1.GraphDef.FromString(gd.SerializeToString()), name="")
                    self._restore_without_meta(checkpoint)
        except (ValueError, tf.errors.OpError) as exc:
            self.close()
            first = engine_message(exc)
            raise ModelLoadError(f"the checkpoint {checkpoint} does not match the graph: {first}") from exc
        self.graph_def = to_tb(self.graph.as_graph_def())

    def _restore_without_meta(self, checkpoint: Path) -> None:
        tf = self.tf
        ops = {op.name: op for op in self.graph.get_operations()}
        if "save/restore_all" in ops and "save/Const" in ops:
            self.session.run("save/restore_all", {"save/Const:0": str(checkpoint)})
            return
        reader = tf.train.load_checkpoint(str(checkpoint))
        stored = reader.get_variable_to_shape_map()
        assigns, feeds = [], {}
        for op in ops.values():
            if op.type not in ("VarHandleOp", "VariableV2"):
                continue
            if op.name not in stored:
                raise ModelLoadError(f"variable '{op.name}' of the graph is not in the checkpoint {checkpoint}")
            value = reader.get_tensor(op.name)
            ph = tf.compat.v1.placeholder(value.dtype, value.shape)
            out = op.outputs[0]
            assigns.append(tf.raw_ops.AssignVariableOp(resource=out, value=ph) if op.type == "VarHandleOp" else tf.compat.v1.assign(out, ph))
            feeds[ph] = value
        self.session.run(assigns, feeds)

    def signature(self) -> Signature:
        return tf_graph.signature_of(self.graph_def)

    def run_fn(self, outputs: list[str]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        def run(feeds):
            values = self.session.run([_tf(o) for o in outputs], {_tf(k): v for k, v in feeds.items()})
            return dict(zip([tensor_name(o) for o in outputs], values))

        return run

    def freeze(self, outputs: list[str]):
        nodes = check_outputs(self.graph_def, outputs)
        gd = self.tf.compat.v1.graph_util.convert_variables_to_constants(
            self.session, self.graph.as_graph_def(), nodes
        )
        return prune_for_inference(to_tb(gd), nodes)

    def close(self) -> None:
        self.session.close()


def _tf(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def freeze_checkpoint(src: Model, outputs: list[str] | None = None):
    meta = src.extras.get("meta")
    if meta is None:
        raise UsageError(
            f"{src.path}: a checkpoint alone has no graph to freeze",
            hint="give the graph too: shipyard freeze GRAPH.pb --checkpoint PREFIX",
        )
    live = LiveGraph(None, src.path, meta)
    try:
        return live.freeze(outputs or [s.name for s in live.signature().outputs])
    finally:
        live.close()
