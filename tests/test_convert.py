"""convert: every edge end to end, verified against the source; the planner; bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from shipyard.convert.api import convert_model
from shipyard.convert.options import ConvertOptions
from shipyard.convert.planner import plan
from shipyard.errors import InputError, OutputPathError, UnsupportedError, UsageError
from shipyard.runtimes import open_runner
from shipyard.sniff import open_model


@pytest.mark.parametrize("target,fmt,path", [
    ("onnx", "onnx", ["keras", "tf-graphdef", "onnx"]),
    ("tflite", "tflite", ["keras", "tf-graphdef", "tflite"]),
    ("tfjs", "tfjs", ["keras", "tf-graphdef", "tfjs"]),
    ("savedmodel", "tf-savedmodel", ["keras", "tf-savedmodel"]),
])
def test_keras_to_every_target(keras_example, tmp_path, target, fmt, path):
    _, paths, x, ref = keras_example
    result = convert_model(str(paths["keras"]), target, tmp_path / f"out.{target}")
    assert result.path == path
    assert result.artifact.format == fmt == open_model(result.artifact.path).format
    assert result.verification.passed and result.verification.outputs[0].max_abs < 1e-5
    with open_runner(result.artifact.path) as runner:  # and it really is the same model
        out = runner.run({runner.signature.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(out.values())), ref, rtol=1e-4, atol=1e-5)


def test_savedmodel_and_pb_sources(keras_paths, tmp_path):
    assert convert_model(str(keras_paths["savedmodel"]), "onnx", tmp_path / "a.onnx").path == ["tf-savedmodel", "tf-graphdef", "onnx"]
    assert convert_model(str(keras_paths["pb"]), "tflite", tmp_path / "b.tflite").verification.passed
    assert convert_model(str(keras_paths["pb"]), "savedmodel", tmp_path / "c").verification.passed


def test_h5_to_keras_and_tflite_to_onnx(keras_paths, tmp_path):
    r = convert_model(str(keras_paths["h5"]), "keras", tmp_path / "m.keras")
    assert r.artifact.format == "keras" and r.verification.passed
    r = convert_model(str(keras_paths["tflite"]), "onnx", tmp_path / "from_tflite.onnx")
    assert r.path == ["tflite", "onnx"] and r.verification.passed


def test_torch_sources(torch_example, tmp_path, monkeypatch):
    _, paths, _, _ = torch_example
    r = convert_model(str(paths["torchscript"]), "onnx", tmp_path / "ts.onnx", ConvertOptions(input_shape={"input": (1, 3, 12, 12)}))
    assert r.verification.passed and r.verification.outputs[0].max_abs < 1e-5
    (tmp_path / "mymodels.py").write_text("from shipyard.examples import torch_cnn\n\ndef build():\n    return torch_cnn()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, fmt in (("torchscript", "torchscript"), ("onnx", "onnx")):
        r = convert_model("mymodels:build", target, tmp_path / f"f.{target}", ConvertOptions(input_shape={"input": (2, 3, 12, 12)}))
        assert r.artifact.format == fmt and r.verification.passed


def test_cli_json_carries_the_figures(keras_paths, tmp_path):
    proc = run_cli("convert", keras_paths["keras"], "--to", "onnx", "-o", tmp_path / "m.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["path"] == ["keras", "tf-graphdef", "onnx"]
    metrics = doc["verification"]["outputs"]["probs"]
    assert metrics["passed"] and metrics["argmax_agreement"] == 1.0 and metrics["cosine"] > 0.999999
    assert "Traceback" not in proc.stderr


def _graph_with(tmp_path, name, fn, specs):
    """Freeze a tf.function with the given input specs into a .pb."""
    import tensorflow as tf

    from shipyard.formats.tf_freeze import freeze_concrete_function

    gd = freeze_concrete_function(tf.function(fn).get_concrete_function(*specs))
    path = tmp_path / name
    path.write_bytes(gd.SerializeToString())
    return path


def test_tflite_scalar_and_bool_inputs_are_fixed(tmp_path):
    import tensorflow as tf

    pb = _graph_with(tmp_path, "scalar.pb", lambda x, scale, flag: tf.where(flag, x * scale, x - scale),
                     [tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([], tf.float32, name="scale"),
                      tf.TensorSpec([], tf.bool, name="flag")])
    result = convert_model(str(pb), "tflite", tmp_path / "scalar.tflite")
    assert any("scalar became shape [1]" in n for n in result.notes)
    assert any("bool became int32" in n for n in result.notes)
    assert result.verification.passed
    with open_runner(result.artifact.path) as runner:
        shapes = {s.name: (s.shape, s.dtype) for s in runner.signature.inputs}
    assert ([1], "float32") in [(list(s), d) for s, d in shapes.values()]
    assert any(d == "int32" for _, d in shapes.values())


def test_unsupported_op_is_named_and_nothing_is_written(tmp_path):
    import tensorflow as tf

    pb = _graph_with(tmp_path, "erfinv.pb", lambda x: tf.math.erfinv(x) * 2.0, [tf.TensorSpec([None, 3], tf.float32, name="x")])
    out = tmp_path / "erfinv.tflite"
    with pytest.raises(UnsupportedError, match="neither a builtin kernel nor a select TensorFlow op for: Erfinv"):
        convert_model(str(pb), "tflite", out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_select_tf_ops_are_suggested_and_used(tmp_path):
    """Erf has no builtin kernel but is a select TF op: the hint says --allow-tf-ops, which then
    writes the model (unverified: the pip LiteRT has no Flex delegate to run it)."""
    import tensorflow as tf

    pb = _graph_with(tmp_path, "erf.pb", lambda x: tf.math.erf(x), [tf.TensorSpec([None, 3], tf.float32, name="x")])
    out = tmp_path / "erf.tflite"
    with pytest.raises(UnsupportedError, match="no builtin kernel for: Erf") as info:
        convert_model(str(pb), "tflite", out)
    assert "--allow-tf-ops" in info.value.hint
    result = convert_model(str(pb), "tflite", out, ConvertOptions(allow_tf_ops=True))
    assert result.verification is None and any(n.startswith("not verified: ") for n in result.notes)
    assert b"FlexErf" in out.read_bytes() and out.stat().st_mode & 0o044 == 0o044  # umask 022: readable by all


def test_planner_and_bad_requests(keras_paths, tmp_path):
    assert [e.dst for e in plan("keras", "tfjs")] == ["tf-graphdef", "tfjs"]
    with pytest.raises(UsageError, match="unknown target format 'coreml'"):
        convert_model(str(keras_paths["onnx"]), "coreml", tmp_path / "x")
    with pytest.raises(UnsupportedError, match="no conversion from onnx to keras"):
        convert_model(str(keras_paths["onnx"]), "keras", tmp_path / "x.keras")
    with pytest.raises(OutputPathError, match="inside the input model"):
        convert_model(str(keras_paths["savedmodel"]), "onnx", keras_paths["savedmodel"] / "m.onnx")
    with pytest.raises(InputError, match="did you mean 'Identity'"):
        convert_model(str(keras_paths["pb"]), "onnx", tmp_path / "x.onnx", ConvertOptions(outputs=["Identty"]))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="refusing to replace"):
        convert_model(str(keras_paths["keras"]), "tfjs", tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_cli_errors(keras_paths, tmp_path):
    assert_clean_error(run_cli("convert", keras_paths["onnx"], "--to", "keras", "-o", tmp_path / "w.keras"), "no conversion from onnx to keras")
    assert_clean_error(run_cli("convert", keras_paths["keras"], "--to", "nope", "-o", tmp_path / "w"), "unknown target")
    assert_clean_error(run_cli("convert", "nosuchpkg.mod:make", "--to", "onnx", "-o", tmp_path / "w.onnx",
                               "--input-shape", "1,3"), "cannot import")


def test_tflite_keeps_graph_names_and_writes_a_signature(tmp_path):
    """TF's own frozen-graph converter keeps the output name 'output'; so does shipyard's."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="input")
        tf.nn.softmax(tf.matmul(x, tf.constant(np.ones([4, 3], "float32"))), name="output")
    pb = tmp_path / "g.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    result = convert_model(str(pb), "tflite", tmp_path / "g.tflite")
    assert result.verification.passed
    interp = Interpreter(model_path=str(tmp_path / "g.tflite"))
    assert [d["name"] for d in interp.get_input_details()] == ["input"]
    assert [d["name"] for d in interp.get_output_details()] == ["output"]
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["input"], "outputs": ["output"]}}
    runner = interp.get_signature_runner("serving_default")
    assert runner(input=np.ones((2, 4), "float32"))["output"].shape == (2, 3)


def test_savedmodel_and_keras_names_survive_conversion(keras_paths, tmp_path):
    """SavedModel -> TFLite carries the signature (key, input and output keys); the frozen graph
    of a SavedModel or Keras model names its outputs after the signature keys / Keras outputs."""
    from ai_edge_litert.interpreter import Interpreter

    from shipyard.formats import tf_saved

    meta = tf_saved.serving_meta(open_model(keras_paths["savedmodel"]))
    want = tf_saved.signature_of(meta)
    convert_model(str(keras_paths["savedmodel"]), "tflite", tmp_path / "sm.tflite")
    sigs = Interpreter(model_path=str(tmp_path / "sm.tflite")).get_signature_list()
    assert sigs == {"serving_default": {"inputs": [t.name for t in want.inputs], "outputs": [t.name for t in want.outputs]}}
    pb = convert_model(str(keras_paths["savedmodel"]), "pb", tmp_path / "sm.pb").artifact
    with open_runner(pb.path) as runner:
        assert [t.name for t in runner.signature.outputs] == [t.name for t in want.outputs]
    result = convert_model(str(keras_paths["keras"]), "tflite", tmp_path / "k.tflite")
    assert result.verification.passed
    interp = Interpreter(model_path=str(tmp_path / "k.tflite"))
    assert [d["name"] for d in interp.get_output_details()] == ["probs"]
    assert [d["name"] for d in interp.get_input_details()] == ["image"]
