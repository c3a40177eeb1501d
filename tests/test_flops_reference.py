"""FLOP counts against published figures for real architectures (random weights).

MobileNetV2 1.0/224: 300 M multiply-adds (Sandler et al. 2018). ResNet50 v1 as Keras builds
it: 3.8 G multiply-adds (He et al. 2016, table 1); the often-quoted 4.1 G is ResNet50 v1.5
(stride on the 3x3 convolution, as torchvision builds it), a different network.
"""
from __future__ import annotations

import pytest

from shipyard.inspection import inspect_model

MAC_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "Conv", "Gemm", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

pytestmark = pytest.mark.slow


def macs(summary) -> float:
    return sum(summary.flops_by_op.get(k, 0) for k in MAC_OPS) / 2


def _frozen(model, path):
    from shipyard.formats.tf_freeze import freeze_concrete_function, keras_concrete_function

    graph_def = freeze_concrete_function(keras_concrete_function(model, batch=1))
    path.write_bytes(graph_def.SerializeToString())
    return graph_def


def test_mobilenet_v2_in_three_formats(tmp_path):
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.applications.MobileNetV2(weights=None)
    graph_def = _frozen(model, tmp_path / "mnv2.pb")
    inputs = [n.name + ":0" for n in graph_def.node if n.op == "Placeholder"]
    onnx_model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=["Identity:0"], opset=17)
    (tmp_path / "mnv2.onnx").write_bytes(onnx_model.SerializeToString())
    (tmp_path / "mnv2.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    for name in ("mnv2.pb", "mnv2.onnx", "mnv2.tflite"):
        s = inspect_model(tmp_path / name)
        assert macs(s) == pytest.approx(300e6, rel=0.05), (name, macs(s))
        assert s.details["flops_uncounted_ops"] == {}, name
        assert s.flops == pytest.approx(2 * 300e6, rel=0.05)


def test_resnet50(tmp_path):
    import keras

    model = keras.applications.ResNet50(weights=None)
    _frozen(model, tmp_path / "r50.pb")
    s = inspect_model(tmp_path / "r50.pb")
    assert macs(s) == pytest.approx(3.8e9, rel=0.05)
    assert s.params == pytest.approx(model.count_params(), rel=0.01)
