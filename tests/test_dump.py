"""dump: intermediate tensors equal what the frameworks themselves compute."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess


@pytest.fixture(scope="module")
def x_file(keras_example, tmp_path_factory):
    path = tmp_path_factory.mktemp("dump") / "x.npy"
    np.save(path, keras_example[2])
    return path


def _layer_outputs(keras_model, x, names):
    import keras

    sub = keras.Model(keras_model.inputs, [keras_model.get_layer(n).output for n in names])
    return dict(zip(names, (np.asarray(v) for v in sub([x], training=False))))


def test_onnx_dump_equals_onnx_reference_evaluator(keras_paths, keras_example, x_file, tmp_path, capsys):
    """Every intermediate from onnxruntime equals onnx's own reference implementation."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "onnx.npz"
    proc = cli_inprocess(capsys, "dump", keras_paths["onnx"], "--inputs", x_file, "--tensors", "all", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    dumped = dict(np.load(out))
    model = onnx.load(str(keras_paths["onnx"]))
    reference = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: keras_example[2]}, intermediate=True)
    produced = [o for n in model.graph.node for o in n.output]
    assert set(dumped) == set(produced)
    for name in produced:
        np.testing.assert_allclose(dumped[name], reference[name], rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(dumped["Identity:0"], keras_example[3], rtol=1e-4, atol=1e-6)


def test_graphdef_and_tflite_dumps_equal_keras_layers(keras_paths, keras_example, x_file, tmp_path, capsys):
    model, _, x, _ = keras_example
    expected = _layer_outputs(model, x, ["relu1", "relu2", "pool", "conv3", "gap"])
    pb_names = ["example_cnn_1/relu1_1/Relu6:0", "example_cnn_1/relu2_1/Relu:0", "example_cnn_1/pool_1/MaxPool2d:0",
                "example_cnn_1/conv3_1/Relu:0", "example_cnn_1/gap_1/Mean:0"]
    out = tmp_path / "pb.npz"
    proc = cli_inprocess(capsys, "dump", keras_paths["pb"], "--inputs", x_file, "--tensors", ",".join(pb_names), "-o", out)
    assert proc.returncode == 0, proc.stderr
    pb = np.load(out)
    for layer, name in zip(expected, pb_names):
        np.testing.assert_allclose(pb[name], expected[layer], rtol=1e-4, atol=1e-5, err_msg=name)

    out = tmp_path / "tflite.npz"
    proc = cli_inprocess(capsys, "dump", keras_paths["tflite"], "--inputs", x_file, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    tfl = np.load(out)
    by_first = {k.split(";")[0]: k for k in tfl.files}  # fused TFLite ops name their tensor "relu;add;conv"
    for layer, name in zip(expected, pb_names):
        key = by_first[name[:-2]]
        np.testing.assert_allclose(tfl[key], expected[layer], rtol=1e-4, atol=1e-5, err_msg=key)


def test_keras_dump_and_listing(keras_paths, keras_example, x_file, tmp_path, capsys):
    import keras

    from shipyard.runtimes import open_runner

    with open_runner(keras_paths["keras"], intermediates=True) as source:
        listed = [t.name for t in source.tensors()]
    assert listed[:3] == ["conv1", "bn1", "relu1"] and listed[-1] == "probs"
    assert listed == [layer.name for layer in keras_example[0].layers if not isinstance(layer, keras.layers.InputLayer)]
    proc = cli_inprocess(capsys, "dump", keras_paths["onnx"], "--list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[-1]["name"] == "Identity:0"
    out = tmp_path / "k.npz"
    proc = cli_inprocess(capsys, "dump", keras_paths["keras"], "--inputs", x_file, "--tensors", "bn2,probs", "-o", out)
    assert proc.returncode == 0, proc.stderr
    values = np.load(out)
    np.testing.assert_allclose(values["probs"], keras_example[3], rtol=1e-5, atol=1e-6)


def test_dump_bad_input(keras_paths, tmp_path, torch_example, capsys):
    assert_clean_error(cli_inprocess(capsys, "dump", keras_paths["onnx"], "--tensors", "no_such_tensor", "-o", tmp_path / "d.npz"),
                       "no tensor named no_such_tensor")
    assert not (tmp_path / "d.npz").exists()
    assert_clean_error(cli_inprocess(capsys, "dump", keras_paths["onnx"], "-o", tmp_path / "missing" / "d.npz"), "does not exist")
    assert_clean_error(cli_inprocess(capsys, "dump", keras_paths["onnx"], "-o", keras_paths["onnx"]), "overwrite")
    assert_clean_error(cli_inprocess(capsys, "dump", keras_paths["onnx"]), "-o dump.npz")
    assert_clean_error(cli_inprocess(capsys, "dump", keras_paths["savedmodel"], "-o", tmp_path / "s.npz"), "cannot be exposed")
    assert_clean_error(cli_inprocess(capsys, "dump", torch_example[1]["torchscript"], "-o", tmp_path / "t.npz"),
                       "shape of input 'input' is unknown")  # TorchScript records no input shapes


def test_torchscript_dump_equals_eager_torch_modules(torch_example, tmp_path, capsys):
    """Every tensor of the traced graph equals the output of the eager module that made it."""
    import torch

    module, paths, x, ref = torch_example
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().numpy())) for m in module]
    with torch.no_grad():
        module(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    x_file = tmp_path / "x.npy"
    np.save(x_file, x)
    proc = cli_inprocess(capsys, "dump", paths["torchscript"], "--list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [t["op"] for t in listed][:4] == ["aten::_convolution", "aten::batch_norm", "aten::relu", "aten::max_pool2d"]
    out = tmp_path / "t.npz"
    proc = cli_inprocess(capsys, "dump", paths["torchscript"], "--inputs", x_file, "-o", out)
    assert proc.returncode == 0, proc.stderr
    dumped = np.load(out)
    assert len(listed) == len(seen) == len(module)
    for tensor, expected in zip(listed, seen):
        np.testing.assert_allclose(dumped[tensor["name"]], expected, rtol=1e-5, atol=1e-6, err_msg=tensor["name"])
    np.testing.assert_allclose(dumped[listed[-1]["name"]], ref, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def int8_models(keras_example, tmp_path_factory):
    from test_compare import int8_onnx, int8_tflite

    directory = tmp_path_factory.mktemp("dump_int8")
    calibration = np.random.default_rng(5).standard_normal((16, 12, 12, 3)).astype("float32")
    return {**int8_tflite(keras_example[0], directory, calibration),
            **int8_onnx(keras_example[1]["onnx"], directory, calibration)}


def _cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_int8_tflite_dump_is_dequantized(keras_paths, int8_models, x_file, tmp_path, capsys):
    """Each int8 tensor is written as real values under its name, with the engine's integers,
    scale and zero point beside it; the figures printed are the real values'."""
    out = tmp_path / "int8.npz"
    proc = cli_inprocess(capsys, "dump", int8_models["int8_io"], "--inputs", x_file, "-o", out)  # float inputs are quantized
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(dequantized int8, scale ") == 7, proc.stdout
    dumped = np.load(out)
    names = [k for k in dumped.files if "#" not in k]
    assert len(names) == 7
    for name in names:
        raw, scale, zero = dumped[f"{name}#quantized"], dumped[f"{name}#scale"], dumped[f"{name}#zero_point"]
        assert dumped[name].dtype == np.float32 and raw.dtype == np.int8 and scale.shape == zero.shape == (1,)
        np.testing.assert_allclose(dumped[name], (raw.astype(np.float64) - zero[0]) * scale[0], rtol=1e-6, atol=1e-7)
    reference = tmp_path / "float.npz"
    assert cli_inprocess(capsys, "dump", keras_paths["tflite"], "--inputs", x_file, "-o", reference).returncode == 0
    floats = np.load(reference)
    assert set(floats.files) == set(names)  # the float model's tensors, key for key
    for name in names:
        assert _cosine(floats[name], dumped[name]) > 0.999, name
        assert np.abs(floats[name] - dumped[name]).max() < 0.25, name
    proc = cli_inprocess(capsys, "dump", int8_models["int8_io"], "--inputs", x_file, "--tensors", "StatefulPartitionedCall_1", "-o",
                   tmp_path / "one.npz", "--json")
    assert proc.returncode == 0, proc.stderr
    (stats,) = json.loads(proc.stdout)["tensors"].values()
    assert stats["dtype"] == "float32" and stats["quantized"]["dtype"] == "int8"
    assert stats["quantized"]["zero_point"] == [-128] and 0 < stats["min"] <= stats["max"] < 1  # softmax, real values


def test_onnx_qoperator_dump_is_dequantized(keras_paths, int8_models, x_file, tmp_path, capsys):
    """ONNX: the scale and zero point are the QLinear*/QuantizeLinear node's inputs."""
    out = tmp_path / "qop.npz"
    proc = cli_inprocess(capsys, "dump", int8_models["qoperator"], "--inputs", x_file, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    tensors = json.loads(proc.stdout)["tensors"]
    quantized = {name: st for name, st in tensors.items() if "quantized" in st}
    assert len(quantized) >= 7 and all(st["quantized"]["dtype"] == "uint8" for st in quantized.values())
    assert all(name.endswith("_quantized") for name in quantized)
    dumped = np.load(out)
    pool = "example_cnn_1/pool_1/MaxPool2d:0"
    raw = dumped[f"{pool}_quantized#quantized"]
    assert raw.dtype == np.uint8 and dumped[f"{pool}_quantized"].dtype == np.float32
    reference = tmp_path / "float.npz"
    assert cli_inprocess(capsys, "dump", keras_paths["onnx"], "--inputs", x_file, "--tensors", pool, "-o", reference).returncode == 0
    assert _cosine(np.load(reference)[pool], dumped[f"{pool}_quantized"]) > 0.999


def test_quantization_dequantizes_per_channel():
    from shipyard.model import Quantization, dequantize

    assert Quantization.of([], []) is None and Quantization.of([0.0], [0]) is None  # a float tensor
    q = Quantization.of(np.array([0.5, 0.25], np.float32), np.array([1, -2]), axis=1)
    assert q.axis == 1 and q.describe() == "2 scales along axis 1"
    data = np.array([[[3, 2], [1, 6]]], np.int8)  # shape [1, 2, 2]: channels on axis 1
    np.testing.assert_array_equal(q.dequantize(data), [[[1.0, 0.5], [0.75, 2.0]]])
    np.testing.assert_array_equal(q.quantize(q.dequantize(data), "int8"), data)
    floats = np.ones(3, np.float32)
    assert dequantize(floats, q) is floats and dequantize(data, None) is data
    one = Quantization.of([0.1], [-128])
    assert one.axis is None and one.quantize(np.array([100.0, -100.0]), "int8").tolist() == [127, -128]  # saturates
