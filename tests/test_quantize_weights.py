"""Weight-only int8 for ONNX (quantize/onnx_weights.py) and bias correction (quantize/bias_correction.py).

The graphs here are built to make one property visible and checkable (a per-channel scale at an old
opset, a convolution whose input has large channel means); the same code on real models is tested in
tests/test_real_quantize.py (PP-OCR rec and det)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def conv_model(path: Path, opset: int, weight: np.ndarray, bias: bool = True) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    out_c, in_c = weight.shape[:2]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, out_c).astype(np.float32), "b"))
        inputs.append("b")
    graph = helper.make_graph(
        [helper.make_node("Conv", inputs, ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, in_c, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, out_c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def outlier_weights(seed: int = 0) -> np.ndarray:
    """Output channels whose ranges differ by 1000x: one per-tensor scale rounds the small ones to zero."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 4, 3, 3))
    w[0] *= 1000.0
    return w


@pytest.mark.parametrize("opset", [11, 13])
def test_weights_are_per_channel_at_any_opset(tmp_path, opset):
    """A per-channel DequantizeLinear needs opset 13: at opset 11-12 (Paddle exports) the weights
    were quantized per tensor while the report said per-channel (PP-OCR rec: cosine 0.76)."""
    import onnx

    from shipyard.quantize.onnx_weights import quantize_weights

    src = conv_model(tmp_path / "m.onnx", opset, outlier_weights())
    proto = onnx.load(str(src))
    assert quantize_weights(proto, minimum_size=16) == 1
    onnx.checker.check_model(proto)
    scale = next(i for i in proto.graph.initializer if i.name == "w_scale")
    assert list(scale.dims) == [6, 1, 1, 1]
    assert [n.op_type for n in proto.graph.node][:2] == ["Cast", "Mul"]
    out = tmp_path / "q.onnx"
    onnx.save(proto, str(out))
    x = np.random.default_rng(1).normal(size=(2, 4, 8, 8)).astype(np.float32)
    ref, got = run(src, x), run(out, x)
    small = slice(1, None)  # the channels a per-tensor scale would have zeroed
    err = np.abs(got[:, small] - ref[:, small]).max() / np.abs(ref[:, small]).max()
    assert err < 0.02, err


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_takes_out_the_mean_error(tmp_path, bias):
    """Inputs with large channel means turn the weights' rounding into a constant offset per output
    channel; bias correction (a new bias where the convolution had none) takes it back out."""
    import onnx

    from shipyard.quantize.bias_correction import conv_input_means
    from shipyard.quantize.onnx_weights import quantize_weights

    rng = np.random.default_rng(2)
    src = conv_model(tmp_path / "m.onnx", 12, rng.normal(size=(8, 4, 3, 3)), bias=bias)
    x = (rng.normal(size=(32, 4, 8, 8)) * 0.1 + np.array([40.0, -25.0, 60.0, 10.0])[None, :, None, None])
    x = x.astype(np.float32)
    feeds = [{"x": x[i:i + 1]} for i in range(len(x))]
    means = conv_input_means(src, feeds)
    assert set(means) == {"conv"}
    np.testing.assert_allclose(means["conv"], x.mean(axis=(0, 2, 3)), rtol=1e-4)

    def offset(with_means) -> float:
        proto = onnx.load(str(src))
        quantize_weights(proto, minimum_size=16, means=with_means)
        out = tmp_path / "q.onnx"
        onnx.save(proto, str(out))
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding
        return float(np.abs((run(out, x) - run(src, x))[inner].mean(axis=(0, 2, 3))).max())

    plain, corrected = offset(None), offset(means)
    assert plain > 0.05 and corrected < plain / 10, (plain, corrected)


def test_a_weight_only_model_is_not_quantized_again(tmp_path):
    import onnx

    from shipyard.errors import UsageError
    from shipyard.quantize.onnx_quant import check_not_quantized, quantized_op_count
    from shipyard.quantize.onnx_weights import quantize_weights

    src = conv_model(tmp_path / "m.onnx", 13, outlier_weights())
    proto = onnx.load(str(src))
    quantize_weights(proto, minimum_size=16)
    onnx.save(proto, str(tmp_path / "q.onnx"))
    assert quantized_op_count(tmp_path / "q.onnx") == 1 and quantized_op_count(src) == 0
    with pytest.raises(UsageError, match="int8 weights cast to float"):
        check_not_quantized(proto, tmp_path / "q.onnx")


def test_weights_inside_if_branches_are_quantized(tmp_path):
    """silero-vad keeps every weight in the branches of an If (8 kHz / 16 kHz): weight-only int8 found
    nothing to quantize there ("the model has no float weights") while the static refusal advised it."""
    import onnx
    from onnx import helper, numpy_helper

    from shipyard.quantize.onnx_quant import quantized_op_count
    from shipyard.quantize.onnx_weights import quantize_weights, weighted_nodes

    def branch(name: str, seed: int):
        w = numpy_helper.from_array(outlier_weights(seed).astype(np.float32), f"{name}_w")
        return helper.make_graph([helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv",
                                                   pads=[1, 1, 1, 1])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, None)], [w])

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="choose", then_branch=branch("a", 0), else_branch=branch("b", 1))],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8]),
              helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    src = tmp_path / "if.onnx"
    onnx.save(model, str(src))
    assert set(weighted_nodes(model, 16)) == {"a_conv", "b_conv"}
    assert quantize_weights(model, minimum_size=16) == 2
    out = tmp_path / "q.onnx"
    onnx.save(model, str(out))
    assert quantized_op_count(out) == 2
    import onnxruntime as ort

    x = np.random.default_rng(3).normal(size=(1, 4, 8, 8)).astype(np.float32)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
