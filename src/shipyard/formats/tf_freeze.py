"""TensorFlow models to frozen GraphDefs: variables folded into constants, only what the
outputs need kept, devices cleared, and the outputs named after the source's names.

The primitives every TensorFlow format uses to reach a frozen GraphDef (a Keras model through
:func:`keras.frozen_graph_def <shipyard.formats.keras.frozen_graph_def>`, a SavedModel through
:func:`tf_saved.frozen_graph_def <shipyard.formats.tf_saved.frozen_graph_def>`, a checkpoint
through ``convert.freeze.LiveGraph``), and the FLOP count of a frozen graph.
"""
from __future__ import annotations

import difflib
import re

from shipyard.deps import require
from shipyard.errors import InputError
from shipyard.flops import FlopTally
from shipyard.formats import tf_protos
from shipyard.model import tensor_name


def keras_concrete_function(model, batch: int | None = None):
    """A concrete inference function of a Keras model, with its inputs named after the model's."""
    tf = require("tensorflow", "Tracing a Keras model")
    specs = []
    for i, inp in enumerate(model.inputs):
        shape = [batch] + list(inp.shape[1:])
        name = getattr(inp, "name", None) or f"input_{i}"
        specs.append(tf.TensorSpec(shape, inp.dtype, name=name.split(":")[0]))
    single = len(specs) == 1

    @tf.function
    def serve(*args):
        out = model(args[0] if single else list(args), training=False)
        return out

    return serve.get_concrete_function(*specs)


def freeze_concrete_function(concrete):
    """GraphDef of a concrete function with every variable folded into a constant."""
    require("tensorflow", "Freezing a TensorFlow function")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    return frozen.graph.as_graph_def()


def to_tb(graph_def_tf):
    """A GraphDef from TensorFlow's own protos as the TensorBoard-compiled one shipyard reads."""
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


def output_names(concrete, names: list[str]) -> list[tuple[str, str]]:
    """(output tensor, name) of a concrete function: dict outputs by key, others by position."""
    structured = concrete.structured_outputs
    if isinstance(structured, dict):
        return [(structured[k].name, k) for k in structured if hasattr(structured[k], "name")]
    return list(zip([t.name for t in concrete.outputs], names))


def frozen_flops(graph_def_tf) -> FlopTally:
    """FLOPs of a frozen graph (TensorFlow's proto), counted like those of a ``.pb`` file."""
    from shipyard.formats.tf_graph import count_flops
    from shipyard.formats.tf_shapes import ShapeInference

    graph_def = to_tb(graph_def_tf)
    return count_flops(graph_def, ShapeInference(graph_def))
