"""FLOPs of TensorFlow 2 models (SavedModel, Keras): freeze the serving function with
TensorFlow, then count the frozen GraphDef with the same pure-Python counter as ``.pb`` files."""
from __future__ import annotations

from shipyard.convert.tf_freeze import freeze_concrete_function, keras_concrete_function
from shipyard.deps import require
from shipyard.flops import FlopTally
from shipyard.formats import tf_protos
from shipyard.formats.tf_graph import count_flops
from shipyard.formats.tf_shapes import ShapeInference
from shipyard.model import Model


def _count(graph_def_tf) -> FlopTally:
    graph_def = tf_protos.GraphDef.FromString(graph_def_tf.SerializeToString())
    return count_flops(graph_def, ShapeInference(graph_def))


def frozen_flops(model: Model, keras_model=None) -> FlopTally:
    """FLOPs per sample (batch 1) of a SavedModel's serving signature or of a Keras model."""
    tf = require("tensorflow", "Counting FLOPs of a TensorFlow 2 model")
    if keras_model is not None:
        return _count(freeze_concrete_function(keras_concrete_function(keras_model, batch=1)))
    from shipyard.formats.tf_saved import pick_signature_key, serving_meta

    key = pick_signature_key(serving_meta(model))
    loaded = tf.saved_model.load(str(model.path))
    fn = loaded.signatures[key]
    _, kwargs = fn.structured_input_signature
    specs = {k: tf.TensorSpec([1 if d is None else d for d in v.shape], v.dtype, name=k) for k, v in kwargs.items()}
    concrete = tf.function(lambda **kw: fn(**kw)).get_concrete_function(**specs)
    return _count(freeze_concrete_function(concrete))
