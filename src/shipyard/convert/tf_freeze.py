"""Freezing TensorFlow 2 functions and Keras models into a GraphDef (variables -> constants)."""
from __future__ import annotations

from shipyard.deps import require


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
