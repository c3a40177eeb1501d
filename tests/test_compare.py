"""compare: real models on real engines; a perturbed model must fail, naming the output and layer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from shipyard.compare import OutputDiff, Tolerance, diff, pair_names
from shipyard.errors import InputError, UsageError


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


def test_same_model_through_three_engines_passes(keras_paths):
    proc = run_cli("compare", keras_paths["keras"], keras_paths["onnx"], keras_paths["tflite"], "--random", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] is True
    (_name, metrics), = doc["outputs"].items()
    assert metrics["paired_by"] == "position" and metrics["cosine"] > 0.9999
    assert metrics["shape_ref"] == [3, 10]
    assert [c["backend"] for c in doc["candidates"]] == ["onnxruntime", "litert"]


def test_perturbed_weights_fail_and_name_the_output(keras_paths, perturbed_onnx):
    proc = run_cli("compare", keras_paths["onnx"], perturbed_onnx)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL: Identity:0" in proc.stdout
    proc = run_cli("compare", keras_paths["onnx"], perturbed_onnx, "--json")
    doc = json.loads(proc.stdout)
    assert doc["passed"] is False and doc["outputs"]["Identity:0"]["passed"] is False
    # a per-output tolerance wide enough lets it pass
    proc = run_cli("compare", keras_paths["onnx"], perturbed_onnx, "--atol", "Identity:0:0.1", "--rtol", "0")
    assert proc.returncode == 0, proc.stdout


def test_layerwise_names_the_perturbed_layer(keras_paths, perturbed_onnx, tmp_path):
    html = tmp_path / "layers.html"
    proc = run_cli("compare", keras_paths["onnx"], perturbed_onnx, "--layerwise", "--chunk", "3", "--json",
                   "--html", html)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    first = doc["first_divergent"]
    assert first["tensor"].startswith("example_cnn_1/conv3_1/") and first["op"] == "Conv"
    assert all(layer["passed"] for layer in doc["layers"][:-1])
    assert doc["checked_tensors"] < doc["matched_tensors"]  # it stopped streaming at the divergence
    assert html.read_text().count("<svg") >= 1


def test_layerwise_across_formats_matches_names_and_layouts(keras_paths):
    """Frozen GraphDef (NHWC) vs the tf2onnx model (NCHW inside) vs TFLite (fused op names)."""
    for other in ("onnx", "tflite"):
        proc = run_cli("compare", keras_paths["pb"], keras_paths[other], "--layerwise", "--json")
        assert proc.returncode == 0, (other, proc.stdout, proc.stderr)
        doc = json.loads(proc.stdout)
        assert doc["matched_tensors"] >= 5 and doc["first_divergent"] is None


def test_bad_inputs_give_clean_errors(keras_paths, tmp_path):
    wrong = tmp_path / "x.npy"
    np.save(wrong, np.zeros((1, 5, 5, 3), np.float32))
    assert_clean_error(run_cli("compare", keras_paths["onnx"], keras_paths["tflite"], "--inputs", wrong), "dimension 1 must be 12")
    two = _two_output_onnx(tmp_path / "two.onnx")
    one = _two_output_onnx(tmp_path / "one.onnx", outputs=("relu",))
    assert_clean_error(run_cli("compare", two, one), "no counterpart", "neg")
    assert_clean_error(run_cli("compare", keras_paths["onnx"], keras_paths["tflite"], "--html", tmp_path / "nope" / "r.html"),
                       "does not exist")
    assert_clean_error(run_cli("compare", keras_paths["onnx"]), "at least two")
    assert_clean_error(run_cli("compare", keras_paths["onnx"], keras_paths["tflite"], "--atol", "x:y"), "--atol")


def test_torchscript_against_its_onnx_export(torch_example):
    paths = torch_example[1]
    proc = run_cli("compare", paths["torchscript"], paths["onnx"], "--shape", "input=2,3,12,12", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["passed"] and doc["outputs"]["output"]["paired_by"] == "name"
    assert doc["outputs"]["output"]["shape_ref"] == [2, 5]
