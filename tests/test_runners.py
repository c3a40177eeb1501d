"""The same model in every format gives the same outputs through its own runner."""
from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InputError, UsageError
from shipyard.runtimes import open_runner

KERAS_FAMILY = ["keras", "h5", "savedmodel", "pb", "pbtxt", "tflite", "onnx", "tfjs"]
EXPECTED_BACKEND = {"keras": "tensorflow", "h5": "tensorflow", "savedmodel": "tensorflow", "pb": "tensorflow",
                    "pbtxt": "tensorflow", "tflite": "litert", "onnx": "onnxruntime",
                    "tfjs": "tensorflow"}


@pytest.mark.parametrize("name", KERAS_FAMILY)
def test_keras_family_agrees_with_keras(keras_example, name):
    _, paths, x, ref = keras_example
    with open_runner(paths[name], threads=1) as runner:
        assert runner.backend == EXPECTED_BACKEND[name]
        out = runner.run({runner.signature.inputs[0].name: x})
    (value,) = out.values()
    np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["torchscript", "onnx"])
def test_torch_family_agrees_with_torch(torch_example, name):
    _, paths, x, ref = torch_example
    with open_runner(paths[name]) as runner:
        out = runner.run({"input": x})
    np.testing.assert_allclose(next(iter(out.values())), ref, rtol=1e-4, atol=1e-5)


def test_names_with_or_without_colon_zero(keras_example):
    _, paths, x, ref = keras_example
    with open_runner(paths["pb"]) as runner:
        a = runner.run({"image:0": x})["Identity"]
        b = runner.run({"image": x})["Identity"]
    np.testing.assert_array_equal(a, b)
    with open_runner(paths["onnx"]) as runner:  # tf2onnx keeps ':0' in ONNX names
        assert runner.signature.inputs[0].name == "image:0"
        np.testing.assert_allclose(runner.run({"image": x})["Identity:0"], ref, rtol=1e-4, atol=1e-5)


def test_checkpoint_runs_with_its_meta_graph(tf1_graph):
    with open_runner(tf1_graph["checkpoint"]) as runner:
        names = [s.name for s in runner.signature.inputs]
        assert names == ["x", "y"]
        out = runner.run({"x": np.ones((4, 8), "float32"), "y": np.eye(3, dtype="float32")[[0, 1, 2, 0]]})
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["onnx", "tflite", "pb", "keras"])
def test_feed_validation(keras_example, name):
    _, paths, x, _ = keras_example
    with open_runner(paths[name]) as runner:
        input_name = runner.signature.inputs[0].name
        with pytest.raises(InputError, match="missing input"):
            runner.run({})
        with pytest.raises(InputError, match="unknown input name.*nope"):
            runner.run({input_name: x, "nope": x})
        with pytest.raises(InputError, match="expected dtype float32, got int64"):
            runner.run({input_name: x.astype("int64")})
        with pytest.raises(InputError, match="expected rank 4"):
            runner.run({input_name: x[0]})
        with pytest.raises(InputError, match="dimension 1 must be 12, got 13"):
            runner.run({input_name: np.zeros((1, 13, 12, 3), "float32")})
        # float64 is a safe-kind conversion and is accepted
        assert runner.run({input_name: x.astype("float64")})


def test_backend_must_fit_the_format(keras_paths):
    with pytest.raises(UsageError, match="litert backend cannot run an onnx model"):
        open_runner(keras_paths["onnx"], backend="litert")
    with pytest.raises(UsageError, match="unknown backend"):
        open_runner(keras_paths["onnx"], backend="tensorrt")


def test_dynamic_batch_on_litert(keras_example):
    _, paths, x, ref = keras_example
    with open_runner(paths["tflite"]) as runner:
        one = runner.run({runner.signature.inputs[0].name: x[:1]})
        three = runner.run({runner.signature.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(one.values())), ref[:1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(next(iter(three.values())), ref, rtol=1e-4, atol=1e-5)


def test_run_chooses_a_savedmodel_signature(tmp_path, capsys, keras_paths):
    """`run --signature KEY` runs that signature of a SavedModel with two; an unknown key lists
    the real ones; the option on another format is a usage error."""
    import json

    import tensorflow as tf

    from conftest import assert_clean_error, cli_inprocess

    class Two(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def plus_one(self, x):
            return {"y": x + 1.0}

    module = Two()
    path = tmp_path / "two"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.double, "plus_one": module.plus_one})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    for key, expected in ((None, x * 2), ("plus_one", x + 1)):
        out = tmp_path / f"{key}.npz"
        args = ["run", path, "--input", f"x={tmp_path / 'x.npy'}", "-o", out, "--json"]
        proc = cli_inprocess(capsys, *args, *(["--signature", key] if key else []))
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out)["y"], expected)
        assert json.loads(proc.stdout)["outputs"]["y"]["shape"] == [2, 3]
    assert_clean_error(cli_inprocess(capsys, "run", path, "--signature", "minus"), "no signature 'minus'", "plus_one")
    assert_clean_error(cli_inprocess(capsys, "run", keras_paths["onnx"], "--signature", "plus_one"), "--signature")
