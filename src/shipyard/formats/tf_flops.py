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
    require("tensorflow", "Counting FLOPs of a TensorFlow 2 model")
    if keras_model is not None:
        return _count(freeze_concrete_function(keras_concrete_function(keras_model, batch=1)))
    from shipyard.formats.tf_saved import load_signature

    return _count(load_signature(model).frozen_graph_def(batch=1)[1])
