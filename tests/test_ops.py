"""ops: the build files each runtime's own tooling reads."""
from __future__ import annotations

import json

from conftest import assert_clean_error, cli_inprocess


def test_ort_config_parses_with_onnxruntime_tools(keras_paths, tmp_path, capsys):
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    out = tmp_path / "required_operators.config"
    proc = cli_inprocess(capsys, "ops", keras_paths["onnx"], "--for", "ort", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    required, _ = parse_config(str(out))
    import onnx

    model = onnx.load(str(keras_paths["onnx"]))
    assert required == {"ai.onnx": {17: {n.op_type for n in model.graph.node}}}
    assert json.loads(proc.stdout)["ops"]["ai.onnx;17"] == sorted({n.op_type for n in model.graph.node})


def test_tflite_ops_match_the_interpreter(keras_paths, tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "register_ops.cc"
    proc = cli_inprocess(capsys, "ops", keras_paths["tflite"], "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    interp = Interpreter(model_path=str(keras_paths["tflite"]))
    used = {op["op_name"] for op in interp._get_ops_details()}
    assert set(doc["ops"]["builtin"]) == used and doc["ops"]["custom"] == []
    source = out.read_text()
    for op in used:
        assert f"BuiltinOperator_{op}," in source


def test_tf_ops_to_register_header(keras_paths, tmp_path, capsys):
    out = tmp_path / "ops_to_register.h"
    proc = cli_inprocess(capsys, "ops", keras_paths["pb"], "--for", "tf", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"Conv2D", "DepthwiseConv2dNative", "MatMul", "Softmax"} <= set(doc["ops"]["ops"])
    header = out.read_text()
    assert "#define OPS_TO_REGISTER" in header and "Conv2DOp<CPUDevice, float>" in header
    assert 'isequal(op, "DepthwiseConv2dNative")' in header
    proc = cli_inprocess(capsys, "ops", keras_paths["keras"], "--for", "tf", "--json")  # Keras is frozen first
    assert proc.returncode == 0, proc.stderr
    assert "Conv2D" in json.loads(proc.stdout)["ops"]["ops"]


def test_ops_wrong_target(keras_paths, tmp_path, capsys):
    assert_clean_error(cli_inprocess(capsys, "ops", keras_paths["tflite"], "--for", "ort"), "ONNX", "--for tflite")
    assert_clean_error(cli_inprocess(capsys, "ops", keras_paths["onnx"], "--for", "tflite"), "TFLite")
    assert_clean_error(cli_inprocess(capsys, "ops", keras_paths["onnx"], "-o", keras_paths["onnx"]), "overwrite")
