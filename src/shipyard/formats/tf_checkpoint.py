"""TF1 checkpoints: a prefix with ``.index``/``.data-*`` files, usually with a ``.meta`` graph.

The graph side (inputs, outputs, ops, FLOPs) comes from the ``.meta`` without TensorFlow;
the variable list is read with TensorFlow's checkpoint reader.
"""
from __future__ import annotations

from shipyard import flops as F
from shipyard.deps import require
from shipyard.errors import ModelFormatError
from shipyard.formats import tf_graph, tf_protos
from shipyard.model import Model, Signature
from shipyard.summary import Summary, add_param


def meta_graph(model: Model):
    """(GraphDef, MetaGraphDef) from the checkpoint's ``.meta`` file, or (None, None)."""
    meta_path = model.extras.get("meta")
    if meta_path is None:
        return None, None
    return tf_protos.parse_graph_file(meta_path)


def variables(model: Model) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{variable name: (dtype, shape)} as stored in the checkpoint."""
    tf = require("tensorflow", "Reading a TF checkpoint")
    try:
        reader = tf.train.load_checkpoint(str(model.path))
    except (tf.errors.OpError, ValueError) as exc:
        raise ModelFormatError(f"{model.path}: the checkpoint cannot be read ({exc.__class__.__name__}: {exc})") from exc
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    return {name: (dtypes[name].name, tuple(shapes[name])) for name in sorted(shapes)}


def signature(model: Model) -> Signature:
    graph_def, _ = meta_graph(model)
    if graph_def is None:
        return Signature((), ())
    return tf_graph.signature_of(graph_def)


def summarize(model: Model) -> Summary:
    graph_def, meta = meta_graph(model)
    size = sum(p.stat().st_size for p in model.path.parent.glob(model.path.name + ".*"))
    if graph_def is not None:
        summary = tf_graph.summarize_graph_def(graph_def, meta, model.path, "tf-checkpoint", size)
    else:
        summary = Summary("tf-checkpoint", str(model.path), size, [], [], {}, 0)
        summary.details["note"] = "no .meta graph next to the checkpoint: give the GraphDef to see inputs and outputs"
    stored = variables(model)
    param_bytes: dict[str, int] = {}
    params = 0
    for dtype, shape in stored.values():
        count = F.numel(shape)
        params += count
        add_param(param_bytes, dtype, count * tf_protos.itemsize(dtype))
    summary.params = params
    summary.param_bytes = param_bytes
    summary.details["checkpoint_variables"] = {k: {"dtype": d, "shape": list(s)} for k, (d, s) in stored.items()}
    return summary


def graph_def(model: Model):
    """The GraphDef (with its function library) that op tools read (``formats.registry``: ``graph``)."""
    graph, _ = meta_graph(model)
    if graph is None:
        from shipyard.errors import UnsupportedError

        raise UnsupportedError(f"{model.path}: the checkpoint has no .meta graph to read ops from")
    return graph
