"""Freezing: variables become constants, only what the outputs need is kept, devices cleared.

What TensorFlow's freeze_graph tool did, without bazel, and for TF2 sources too: a
GraphDef or ``.meta`` plus a checkpoint, a SavedModel signature, or a Keras model.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from shipyard.convert.tf_freeze import freeze_concrete_function, keras_concrete_function
from shipyard.deps import require
from shipyard.errors import InputError, ModelLoadError, UsageError
from shipyard.formats import tf_graph, tf_protos
from shipyard.model import Model, Signature, tensor_name


def _to_tb(graph_def_tf):
    return tf_protos.GraphDef.FromString(graph_def_tf.SerializeToString())


def check_outputs(graph_def, outputs: list[str]) -> list[str]:
    """Node names for the requested outputs; a misspelt one gets a suggestion."""
    names = {n.name for n in graph_def.node}
    nodes = []
    for out in outputs:
        node = tensor_name(out).split(":")[0]
        if node not in names:
            close = difflib.get_close_matches(node, names, n=3)
            raise InputError(
                f"the graph has no node named '{node}'" + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""),
                hint="see the detected outputs with: shipyard inspect GRAPH",
            )
        nodes.append(node)
    return nodes


def prune_for_inference(graph_def, outputs: list[str]):
    """Keep only the nodes the outputs need through data edges; drop control edges and devices.

    In a frozen graph, control edges only order variable reads and initialisers that no
    longer exist, and inference-only runtimes (TF.js) choke on the NoOps they point to.
    """
    keep_nodes = check_outputs(graph_def, outputs)
    by_name = {n.name: n for n in graph_def.node}
    keep: set[str] = set()
    stack = list(keep_nodes)
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        for ref in by_name[name].input:
            if not ref.startswith("^"):
                stack.append(ref.split(":")[0])
    out = tf_protos.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in keep:
            copy = out.node.add()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(i for i in node.input if not i.startswith("^"))
            copy.device = ""
    return out


_NODE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def name_outputs(graph_def, names: list[tuple[str, str]]):
    """Rename the nodes behind a traced function's outputs (``Identity``, ``Identity_1``...) to
    the names the source gave them (SavedModel signature keys, Keras output names), in place.

    ``names`` pairs an output tensor with its name. An output is left as it is when it is not
    output 0 of its node, when the name is not a valid node name, or when a node of that name
    exists already. Returns the graph.
    """
    existing = {n.name for n in graph_def.node}
    mapping: dict[str, str] = {}
    for tensor, new in names:
        node, _, port = tensor.partition(":")
        if port not in ("", "0") or node not in existing or node in mapping or new == node:
            continue
        if new in existing or not _NODE_NAME.match(new):
            continue
        mapping[node] = new
        existing.add(new)
    if not mapping:
        return graph_def
    for n in graph_def.node:
        n.name = mapping.get(n.name, n.name)
        for i, ref in enumerate(n.input):
            control = "^" if ref.startswith("^") else ""
            base, sep, port = ref.lstrip("^").partition(":")
            if base in mapping:
                n.input[i] = f"{control}{mapping[base]}{sep}{port}"
    return graph_def


def _output_names(concrete, names: list[str]) -> list[tuple[str, str]]:
    """(output tensor, name) of a concrete function: dict outputs by key, others by position."""
    structured = concrete.structured_outputs
    if isinstance(structured, dict):
        return [(structured[k].name, k) for k in structured if hasattr(structured[k], "name")]
    return list(zip([t.name for t in concrete.outputs], names))


def freeze_keras(src: Model):
    from shipyard.formats import keras as keras_format

    keras_model = keras_format.load(src)
    concrete = keras_concrete_function(keras_model)
    names = [s.name for s in keras_format.signature_of(keras_model).outputs]
    return name_outputs(_to_tb(freeze_concrete_function(concrete)), _output_names(concrete, names))


def freeze_saved_model(src: Model, signature_key: str | None = None):
    """The frozen GraphDef of one SavedModel signature: its placeholders and outputs are named
    after the signature's input and output keys."""
    from shipyard.formats.tf_saved import load_signature

    concrete, graph_def = load_signature(src, signature_key).frozen_graph_def()
    graph_def = _to_tb(graph_def)
    return name_outputs(graph_def, _output_names(concrete, [])) if concrete is not None else graph_def


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
            first = getattr(exc, "message", str(exc)).strip().splitlines()[0][:300]
            raise ModelLoadError(f"the checkpoint {checkpoint} does not match the graph: {first}") from exc
        self.graph_def = _to_tb(self.graph.as_graph_def())

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
        return prune_for_inference(_to_tb(gd), nodes)

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
