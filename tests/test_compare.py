"""compare: real models on real engines; a perturbed model must fail, naming the output and layer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess
from shipyard.compare import Tolerance
from shipyard.errors import InputError, UsageError
from shipyard.verify import OutputDiff, diff, pair_names


@pytest.fixture(scope="module")
def perturbed_onnx(keras_paths, tmp_path_factory):
    """The example ONNX model with conv3's weights scaled by 1.5 (a real, wrong model)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(keras_paths["onnx"]))
    hit = 0
    for init in model.graph.initializer:
        if init.name.startswith("example_cnn_1/conv3_1"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
            hit += 1
    assert hit, "conv3 weights not found"
    path = tmp_path_factory.mktemp("perturbed") / "bad.onnx"
    onnx.save(model, str(path))
    return path


def _two_output_onnx(path, outputs=("relu", "neg")):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["relu"], name="r"), helper.make_node("Neg", ["x"], ["neg"], name="n")]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 4]) for o in outputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])], outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_diff_metrics_and_backward_compatible_fields():
    a = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=np.float32)
    d = diff("y", a, a + 0.01, atol=1e-3, rtol=0)
    assert isinstance(d, OutputDiff) and not d.passed
    assert d.max_abs == pytest.approx(0.01, rel=1e-3)
    assert d.snr_db == pytest.approx(10 * np.log10((a.astype(np.float64) ** 2).sum() / (6 * 1e-4)), rel=1e-3)
    assert d.argmax_agreement == 1.0 and d.topk_agreement == 1.0
    assert diff("y", a, a + 0.01, atol=0.02).passed
    # the original ten positional fields are still first, in order
    assert list(d.to_json())[:10] == ["name", "max_abs", "mean_abs", "max_rel", "cosine", "argmax_agreement",
                                      "nonfinite", "passed", "shape_ref", "shape_other"]
    bad = diff("y", a, np.where(a > 5, np.nan, a))
    assert not bad.passed and bad.nonfinite_other == 1 and bad.nonfinite_ref == 0
    json.dumps(bad.to_json())  # NaN/inf figures stay valid JSON


def test_tolerance_per_output_and_pairing():
    tol = Tolerance.parse(["1e-2", "logits:0.5"], 1e-4, "--atol")
    assert tol.get("logits:0") == 0.5 and tol.get("probs") == 1e-2
    with pytest.raises(UsageError):
        Tolerance.parse(["logits:lots"], 1e-4, "--atol")
    pairs = pair_names(["probs", "aux:0"], ["aux", "Identity:0"])
    assert [(p.ref, p.other, p.how) for p in pairs] == [("probs", "Identity:0", "position"), ("aux:0", "aux", "name")]
    with pytest.raises(InputError, match="no counterpart"):
        pair_names(["a", "b"], ["c"])


def test_same_model_through_three_engines_passes(keras_paths, capsys):
    proc = cli_inprocess(capsys, "compare", keras_paths["keras"], keras_paths["onnx"], keras_paths["tflite"], "--random", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] is True
    (_name, metrics), = doc["outputs"].items()
    assert metrics["paired_by"] == "position" and metrics["cosine"] > 0.9999
    assert metrics["shape_ref"] == [3, 10]
    assert [c["backend"] for c in doc["candidates"]] == ["onnxruntime", "litert"]


def test_perturbed_weights_fail_and_name_the_output(keras_paths, perturbed_onnx, capsys):
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL: Identity:0" in proc.stdout
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx, "--json")
    doc = json.loads(proc.stdout)
    assert doc["passed"] is False and doc["outputs"]["Identity:0"]["passed"] is False
    # a per-output tolerance wide enough lets it pass
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx, "--atol", "Identity:0:0.1", "--rtol", "0")
    assert proc.returncode == 0, proc.stdout


def test_a_failing_output_says_where_and_how_widely(keras_paths, perturbed_onnx, tmp_path, capsys):
    """How many elements are outside the tolerance, the worst ones with their indices, the |error|
    distribution by decade: text, JSON and HTML (checked against onnxruntime run here directly)."""
    import onnxruntime as ort

    x = np.random.default_rng(4).standard_normal((4, 12, 12, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    ref, bad = (ort.InferenceSession(str(p)).run(None, {"image:0": x})[0].astype(np.float64)
                for p in (keras_paths["onnx"], perturbed_onnx))
    err = np.abs(ref - bad)
    outside = int((err > 1e-4 + 1e-3 * np.abs(ref)).sum())
    worst = [int(i) for i in np.unravel_index(int(err.argmax()), err.shape)]
    html = tmp_path / "cmp.html"
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx, "--inputs", tmp_path / "x.npy",
                         "--json", "--html", html)
    assert proc.returncode == 1, proc.stderr
    d = json.loads(proc.stdout)["outputs"]["Identity:0"]
    assert d["outside"] == outside > 0 and d["size"] == err.size
    assert d["worst"][0]["index"] == worst and abs(d["worst"][0]["abs_error"] - err.max()) < 1e-6
    assert sum(d["histogram"]["decades"].values()) + d["histogram"]["zero"] == err.size
    text = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx, "--inputs", tmp_path / "x.npy").stdout
    assert f"outside tolerance: {outside} of {err.size} elements" in text and f"at {worst}:" in text
    assert "|err| by decade:" in text
    page = html.read_text()
    assert f"{outside} of {err.size} elements outside the tolerance" in page and "largest errors" in page
    assert page.count("<svg") >= 1 and "atol 0.0001" in page


def test_layerwise_names_the_perturbed_layer(keras_paths, perturbed_onnx, tmp_path, capsys):
    html = tmp_path / "layers.html"
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], perturbed_onnx, "--layerwise", "--chunk", "3", "--json",
                   "--html", html)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    first = doc["first_divergent"]
    assert first["tensor"].startswith("example_cnn_1/conv3_1/") and first["op"] == "Conv"
    assert all(layer["passed"] for layer in doc["layers"][:-1])
    assert doc["checked_tensors"] < doc["matched_tensors"]  # it stopped streaming at the divergence
    assert html.read_text().count("<svg") >= 1


def test_layerwise_across_formats_matches_names_and_layouts(keras_paths, capsys):
    """Frozen GraphDef (NHWC) vs the tf2onnx model (NCHW inside) vs TFLite (fused op names)."""
    for other in ("onnx", "tflite"):
        proc = cli_inprocess(capsys, "compare", keras_paths["pb"], keras_paths[other], "--layerwise", "--json")
        assert proc.returncode == 0, (other, proc.stdout, proc.stderr)
        doc = json.loads(proc.stdout)
        assert doc["matched_tensors"] >= 5 and doc["first_divergent"] is None


def test_bad_inputs_give_clean_errors(keras_paths, tmp_path, capsys):
    wrong = tmp_path / "x.npy"
    np.save(wrong, np.zeros((1, 5, 5, 3), np.float32))
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--inputs", wrong), "dimension 1 must be 12")
    two = _two_output_onnx(tmp_path / "two.onnx")
    one = _two_output_onnx(tmp_path / "one.onnx", outputs=("relu",))
    assert_clean_error(cli_inprocess(capsys, "compare", two, one), "no counterpart", "neg")
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--html", tmp_path / "nope" / "r.html"),
                       "does not exist")
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"]), "at least two")
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--atol", "x:y"), "--atol")
    # a tolerance for an output the model does not have is an error, not the default tolerance in silence
    assert_clean_error(cli_inprocess(capsys, "compare", keras_paths["onnx"], keras_paths["tflite"], "--atol", "Identty:0.01"),
                       "no output 'Identty'", "did you mean 'Identity'")


def test_torchscript_against_its_onnx_export(torch_example, capsys):
    paths = torch_example[1]
    proc = cli_inprocess(capsys, "compare", paths["torchscript"], paths["onnx"], "--shape", "input=2,3,12,12", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] and doc["outputs"]["output"]["paired_by"] == "name"
    assert doc["outputs"]["output"]["shape_ref"] == [2, 5]


# -- int8 models: figures on dequantized values ---------------------------------------------


def int8_tflite(keras_model, directory, calibration):
    """Full-integer TFLite models of ``keras_model`` from TensorFlow's converter: ``int8_io``
    (int8 inputs and outputs) and ``int8`` (float inputs and outputs, int8 inside)."""
    import contextlib
    import io

    import tensorflow as tf

    def representative():
        for x in calibration:
            yield [x[None]]

    paths = {}
    for name, io_type in (("int8_io", tf.int8), ("int8", None)):
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            converter.inference_input_type = converter.inference_output_type = io_type
        with contextlib.redirect_stdout(io.StringIO()):
            data = converter.convert()
        paths[name] = directory / f"{name}.tflite"
        paths[name].write_bytes(data)
    return paths


def int8_onnx(float_onnx, directory, calibration):
    """onnxruntime's static quantization of an ONNX model: ``qdq`` (int8 QuantizeLinear/
    DequantizeLinear pairs) and ``qoperator`` (uint8 activations, QLinearConv...)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(float_onnx)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{name: x[None]} for x in calibration])

        def get_next(self):
            return next(self.feeds, None)

    paths = {"qdq": directory / "qdq.onnx", "qoperator": directory / "qoperator.onnx"}
    quantize_static(str(float_onnx), str(paths["qdq"]), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    quantize_static(str(float_onnx), str(paths["qoperator"]), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return paths


@pytest.fixture(scope="module")
def int8_models(keras_example, tmp_path_factory):
    directory = tmp_path_factory.mktemp("int8")
    calibration = np.random.default_rng(5).standard_normal((16, 12, 12, 3)).astype("float32")
    x = directory / "x.npy"
    np.save(x, keras_example[2])
    return {**int8_tflite(keras_example[0], directory, calibration),
            **int8_onnx(keras_example[1]["onnx"], directory, calibration), "x": x}


@pytest.mark.parametrize("variant", ["int8_io", "int8"])
def test_layerwise_against_int8_tflite_dequantizes(keras_paths, int8_models, variant, capsys):
    """Before: raw int8 compared with floats ('cosine -0.30', first divergence at the first
    layer); an int8-input model was refused. Now every int8 tensor is dequantized first."""
    proc = cli_inprocess(capsys, "compare", keras_paths["tflite"], int8_models[variant], "--layerwise", "--inputs", int8_models["x"],
                   "--json")
    assert proc.returncode == 1, proc.stderr  # quantization noise is beyond the default atol 1e-4...
    doc = json.loads(proc.stdout)
    assert doc["checked_tensors"] == doc["matched_tensors"] >= 6
    assert doc["first_divergent"]["dequantized"] == "other" and doc["first_divergent"]["cosine"] > 0.999
    # every tensor is int8 (a float-output model's last one comes from its DEQUANTIZE op)
    int8_layers = doc["layers"] if variant == "int8_io" else doc["layers"][:-1]
    assert all(layer["dequantized"] == "other" for layer in int8_layers), doc["layers"]
    for layer in doc["layers"]:
        assert layer["cosine"] > 0.999 and 0 < layer["rel_l2"] < 0.05, layer
    # ...and within a tolerance that fits it
    proc = cli_inprocess(capsys, "compare", keras_paths["tflite"], int8_models[variant], "--layerwise", "--inputs", int8_models["x"],
                   "--atol", "0.25")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "other dequantized]" in proc.stdout and "rel_l2 0.0" in proc.stdout
    assert "no divergence" in proc.stdout


def test_compare_float_with_int8_io_tflite(keras_paths, int8_models, capsys):
    """A full-int8 model's int8 output is dequantized; its int8 input gets the float inputs quantized."""
    proc = cli_inprocess(capsys, "compare", keras_paths["tflite"], int8_models["int8_io"], "--inputs", int8_models["x"], "--json")
    assert proc.returncode == 1, proc.stderr  # outside the exact default tolerance
    (out,) = json.loads(proc.stdout)["outputs"].values()
    assert out["paired_by"] == "name" and out["cosine"] > 0.999 and out["rel_l2"] < 0.05
    assert out["max_abs"] < 0.02 and out["argmax_agreement"] == 1.0
    proc = cli_inprocess(capsys, "compare", keras_paths["tflite"], int8_models["int8_io"], "--inputs", int8_models["x"],
                   "--atol", "0.02")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rel_l2 0.0" in proc.stdout


def test_layerwise_against_onnx_qdq_and_qoperator(keras_paths, int8_models, capsys):
    """ONNX: scale and zero point come from the QuantizeLinear/QLinear* nodes; a float tensor X
    pairs with the quantizer's X_QuantizeLinear_Output / X_quantized."""
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], int8_models["qdq"], "--layerwise", "--inputs", int8_models["x"],
                   "--atol", "0.5", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    quantized = [layer for layer in doc["layers"] if layer["dequantized"]]
    assert len(quantized) >= 8 and all(layer["other_tensor"].endswith("_QuantizeLinear_Output") for layer in quantized)
    assert all(layer["cosine"] > 0.999 and layer["rel_l2"] < 0.05 for layer in doc["layers"]), doc["layers"]
    # QOperator folds each ReLU into its convolution's output range: those tensors differ from the
    # float model's pre-ReLU ones (a real difference, reported), the others agree
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], int8_models["qoperator"], "--layerwise", "--inputs", int8_models["x"],
                   "--chunk", "64", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["checked_tensors"] == doc["matched_tensors"]
    layers = {layer["tensor"]: layer for layer in doc["layers"]}
    pool = layers["example_cnn_1/pool_1/MaxPool2d:0"]  # uint8 MaxPool keeps its input's quantization
    assert pool["other_tensor"].endswith("_quantized") and pool["dequantized"] == "other" and pool["cosine"] > 0.999
    assert layers["Identity:0"]["cosine"] > 0.999
    assert all(layer["cosine"] > 0.5 for layer in layers.values()), doc["layers"]


def _scaled_output_onnx(src, dst, factor=2.0):
    """The model with its output multiplied by ``factor``: a pure scale bug."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [o + "_unscaled" if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "scale_factor"))
    model.graph.node.append(helper.make_node("Mul", [out + "_unscaled", "scale_factor"], [out], name="scale_bug"))
    onnx.save(model, str(dst))
    return dst


def test_pure_scale_bug_shows_as_relative_error(keras_paths, tmp_path, capsys):
    """Off by a factor 2 everywhere: cosine stays 1, the relative error says 1 (100%)."""
    a = np.array([[0.1, 0.2, 0.7]])
    d = diff("y", a, 2 * a)
    assert d.cosine == pytest.approx(1.0) and d.rel_l2 == pytest.approx(1.0)
    assert diff("y", a, a).rel_l2 == 0.0 and diff("y", a, a * 1.01).rel_l2 == pytest.approx(0.01)
    scaled = _scaled_output_onnx(keras_paths["onnx"], tmp_path / "scaled.onnx")
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], scaled)
    assert proc.returncode == 1, proc.stderr
    assert "cosine 1  rel_l2 1  " in proc.stdout, proc.stdout
    proc = cli_inprocess(capsys, "compare", keras_paths["onnx"], scaled, "--layerwise")
    assert proc.returncode == 1, proc.stderr
    last = [line for line in proc.stdout.splitlines() if line.strip().startswith("DIFF")]
    assert len(last) == 1 and "Identity:0" in last[0] and "cosine 1.000000  rel_l2 1" in last[0], proc.stdout
    assert proc.stdout.rstrip().endswith("cosine 1.000000  rel_l2 1")
