"""inspect against truths computed independently by the frameworks themselves."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import run_cli
from shipyard.inspection import inspect_model

# FLOPs of the example CNN, by hand: 2 x multiply-adds of each layer (12x12 input, 'same').
CONV1 = 2 * 12 * 12 * 8 * (3 * 3 * 3)
DEPTHWISE = 2 * 12 * 12 * 8 * (3 * 3)
CONV3 = 2 * 6 * 6 * 16 * 8
DENSE = 2 * 16 * 10


def test_graphdef_matches_tensorflow(keras_example):
    import tensorflow as tf

    model, paths, _, _ = keras_example
    summary = inspect_model(paths["pb"])
    gd = tf.compat.v1.GraphDef.FromString(paths["pb"].read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
    truth = Counter(op.type for op in graph.get_operations())
    assert Counter(summary.ops) == truth
    assert [t.name for t in summary.inputs] == ["image"]
    assert [t.name for t in summary.outputs] == ["Identity"]
    assert summary.inputs[0].shape == (-1, 12, 12, 3)
    assert summary.outputs[0].shape == (-1, 10) and summary.outputs[0].dtype == "float32"
    consts = sum(int(np.prod(op.outputs[0].shape)) for op in graph.get_operations() if op.type == "Const")
    assert summary.params == consts
    assert summary.flops_by_op["Conv2D"] == CONV1 + CONV3
    assert summary.flops_by_op["DepthwiseConv2dNative"] == DEPTHWISE
    assert summary.flops_by_op["MatMul"] == DENSE
    assert inspect_model(paths["pbtxt"]).to_json()["ops"] == summary.to_json()["ops"]


def test_onnx_matches_onnx(keras_example):
    import onnx
    from onnx import numpy_helper

    _, paths, _, _ = keras_example
    summary = inspect_model(paths["onnx"])
    proto = onnx.load(str(paths["onnx"]))
    assert Counter(summary.ops) == Counter(n.op_type for n in proto.graph.node)
    assert summary.params == sum(numpy_helper.to_array(t).size for t in proto.graph.initializer)
    assert [t.name for t in summary.inputs] == [i.name for i in proto.graph.input]
    conv = summary.flops_by_op["Conv"]
    # Conv holds conv1 + depthwise + conv3 (+ at most one bias add per output element).
    assert CONV1 + DEPTHWISE + CONV3 <= conv <= CONV1 + DEPTHWISE + CONV3 + 12 * 12 * 8 * 2 + 6 * 6 * 16
    assert summary.version == "opset 17"


def test_tflite_matches_litert(keras_example):
    from ai_edge_litert.interpreter import Interpreter

    _, paths, _, _ = keras_example
    summary = inspect_model(paths["tflite"])
    interp = Interpreter(model_path=str(paths["tflite"]))
    truth = Counter(op["op_name"] for op in interp._get_ops_details())
    assert Counter(summary.ops) == truth
    assert [t.name for t in summary.inputs] == [d["name"] for d in interp.get_input_details()]
    assert [t.name for t in summary.outputs] == [d["name"] for d in interp.get_output_details()]
    total = CONV1 + DEPTHWISE + CONV3 + DENSE
    macs = sum(summary.flops_by_op[k] for k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert total <= macs <= total * 1.1  # plus fused bias adds and activations


def test_keras_savedmodel_and_h5_match_keras(keras_example):
    model, paths, _, _ = keras_example
    for name in ("keras", "h5"):
        s = inspect_model(paths[name])
        assert s.params == model.count_params()
        assert [t.name for t in s.inputs] == ["image"] and [t.name for t in s.outputs] == ["probs"]
        assert s.ops["Conv2D"] == 2 and s.ops["BatchNormalization"] == 2
        assert s.flops_by_op["Conv2D"] == CONV1 + CONV3
    sm = inspect_model(paths["savedmodel"])
    assert sm.params == model.count_params()
    assert sm.flops_by_op["DepthwiseConv2dNative"] == DEPTHWISE
    assert sm.inputs[0].shape == (-1, 12, 12, 3)


def test_checkpoint_matches_tensorflow(tf1_graph):
    import tensorflow as tf

    s = inspect_model(tf1_graph["checkpoint"])
    stored = tf.train.list_variables(str(tf1_graph["checkpoint"]))
    assert s.params == sum(int(np.prod(shape)) for _, shape in stored)
    assert [t.name for t in s.inputs] == ["x", "y"]
    assert "probs" in [t.name for t in s.outputs]
    assert not any(t.name.startswith(("save", "Adam", "init", "train")) for t in s.outputs)
    assert s.details["saver"]["restore_op"] == "save/restore_all"
    assert s.details["control_edges"] > 0
    graph = inspect_model(tf1_graph["graph"])
    assert graph.details["variable_params"] > 0 and graph.ops["ResourceApplyAdam"] == 4


def test_torchscript_matches_torch(torch_example):
    module, paths, _, _ = torch_example
    s = inspect_model(paths["torchscript"])
    assert s.params == sum(t.numel() for t in module.state_dict().values())
    assert s.ops["aten::_convolution"] == 2
    assert [t.name for t in s.inputs] == ["input"]
    assert s.flops is None and "flops_unavailable" in s.details


def test_json_keys(keras_paths):
    proc = run_cli("inspect", keras_paths["onnx"], "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for key in ("format", "inputs", "outputs", "ops", "params", "flops", "size_bytes"):
        assert key in doc
    assert doc["format"] == "onnx"
    assert set(doc["inputs"][0]) == {"name", "dtype", "shape"}
    assert doc["flops"] > 0


@pytest.mark.parametrize("name", ["onnx", "tflite", "pb"])
def test_inspect_does_not_import_heavy_frameworks(keras_paths, name):
    code = (
        "import sys; from shipyard.inspection import inspect_model; "
        f"inspect_model({str(keras_paths[name])!r}); "
        "heavy = [m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tf2_savedmodel_counts_each_variable_once(tmp_path):
    """Parameters are the variables the serving signature captures: two variables with one name
    are two (a count by name said 160 for this 240), an optimizer's slots are none."""
    import tensorflow as tf

    class TwoLayers(tf.Module):
        def __init__(self):
            super().__init__()
            self.w1 = tf.Variable(tf.ones([8, 16]), name="w")   # same name on purpose
            self.w2 = tf.Variable(tf.ones([16, 6]), name="w")
            self.b = tf.Variable(tf.zeros([16]), name="b")
            self.unused = tf.Variable(tf.zeros([1000]), name="unused")  # not in the signature

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(tf.matmul(x, self.w1) + self.b, self.w2)}

    module = TwoLayers()
    path = tmp_path / "sm"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    s = inspect_model(path)
    assert s.params == 8 * 16 + 16 * 6 + 16 == 240 and s.details["variables"] == 3
    assert s.param_bytes == {"float32": 960}


def test_the_public_inspect_stays_callable_after_open_runner(keras_paths):
    """`shipyard.inspect` is a function of the package; importing the module that implements it
    (which opening a runner does) must not replace it with a module."""
    import shipyard

    with shipyard.open_runner(keras_paths["onnx"]) as runner:
        assert runner.signature.inputs
    summary = shipyard.inspect(keras_paths["onnx"])
    assert summary.format == "onnx"
