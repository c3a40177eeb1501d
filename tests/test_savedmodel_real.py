"""SavedModels as they come from the field: Keras 2 exports with optimizer slot variables (which
TF 2.21's object-graph loader cannot revive), TF1 ``simple_save`` exports, and the names and
signatures they must keep when converted."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from shipyard.convert.api import convert_model
from shipyard.inspection import inspect_model
from shipyard.model import Model
from shipyard.runtimes import open_runner


@pytest.fixture(scope="module")
def slots_savedmodel(tmp_path_factory) -> Path:
    """A TF2 SavedModel whose object graph records optimizer slot variables (a tf.Module holding
    a v1 Adam optimizer after one step), like a Keras 2 ``model.save`` with its optimizer."""
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(24, dtype="float32").reshape(4, 6) / 10, name="w")
            self.b = tf.Variable(np.zeros(6, "float32"), name="b")
            self.optimizer = tf.compat.v1.train.AdamOptimizer(0.01)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"scores": tf.matmul(x, self.w) + self.b}

    module = Scorer()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module.serve(tf.ones([2, 4]))["scores"])
    grads = tape.gradient(loss, [module.w, module.b])
    module.optimizer.apply_gradients(zip(grads, [module.w, module.b]))
    path = tmp_path_factory.mktemp("slots") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def simple_save_model(tmp_path_factory) -> Path:
    """A TF1 SavedModel (``simple_save``) trained one Adam step: variables, slots, beta powers."""
    import tensorflow as tf

    v1 = tf.compat.v1
    path = tmp_path_factory.mktemp("simple_save") / "saved_model"
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None, 8], name="x")
        w1 = v1.get_variable("dense1/kernel", [8, 16], initializer=v1.glorot_uniform_initializer(seed=0))
        b1 = v1.get_variable("dense1/bias", [16], initializer=v1.zeros_initializer())
        w2 = v1.get_variable("dense2/kernel", [16, 3], initializer=v1.glorot_uniform_initializer(seed=1))
        b2 = v1.get_variable("dense2/bias", [3], initializer=v1.zeros_initializer())
        step = v1.train.get_or_create_global_step()
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
        probs = tf.nn.softmax(tf.matmul(hidden, w2) + b2, name="probs")
        train = v1.train.AdamOptimizer(0.01).minimize(-tf.reduce_mean(tf.math.log(probs[:, 0])), global_step=step)
        session.run(v1.global_variables_initializer())
        session.run(train, {x: np.ones((2, 8), "float32")})
        v1.saved_model.simple_save(session, str(path), inputs={"x": x}, outputs={"probs": probs})
    return path


def _tf1_reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
        sig = meta.signature_def["serving_default"]
        return session.run({k: v.name for k, v in sig.outputs.items()},
                           {sig.inputs[k].name: v for k, v in feeds.items()})


def test_the_object_graph_loader_fails_on_optimizer_slots(slots_savedmodel):
    """The failure this module is about (TF 2.21): the fixture reproduces it."""
    import tensorflow as tf

    with pytest.raises(AttributeError, match="add_slot"):
        tf.saved_model.load(str(slots_savedmodel))


def test_slots_savedmodel_inspects_runs_and_converts(slots_savedmodel, tmp_path):
    s = inspect_model(slots_savedmodel)
    assert s.params == 30 and s.param_bytes == {"float32": 120}  # w 4x6 + b 6; not Adam's m, v, beta powers
    assert s.flops == 54  # MatMul 48 + AddV2 6 per sample
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    with open_runner(slots_savedmodel) as runner:
        got = runner.run({"x": x})
    np.testing.assert_allclose(got["scores"], _tf1_reference(slots_savedmodel, {"x": x})["scores"], rtol=1e-6)
    for target, name in (("tflite", "m.tflite"), ("onnx", "m.onnx"), ("pb", "m.pb")):
        r = convert_model(str(slots_savedmodel), target, tmp_path / name)
        assert r.verification.passed, (target, r.verification)


def test_slots_savedmodel_cli_is_clean(slots_savedmodel):
    proc = run_cli("inspect", slots_savedmodel)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "params     30" in proc.stdout


def test_simple_save_params_and_conversion(simple_save_model, tmp_path):
    s = inspect_model(simple_save_model)
    assert s.params == 8 * 16 + 16 + 16 * 3 + 3 == 195  # was 0: a TF1 SavedModel has no object graph
    assert s.details["variables"] == 4
    assert s.details["variables_not_counted"] == {"counters": 1, "optimizer slots": 8, "optimizer state": 2}
    r = convert_model(str(simple_save_model), "tflite", tmp_path / "m.tflite")
    assert r.verification.passed
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tmp_path / "m.tflite"))
    assert interp.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["probs"]}}
    assert [d["name"] for d in interp.get_output_details()] == ["probs"]


def test_falls_back_to_the_tf1_loader_when_the_object_graph_loader_fails(keras_paths, monkeypatch):
    import tensorflow as tf

    from shipyard.formats import tf_saved

    def broken(*args, **kwargs):
        raise ValueError("Unknown layer: 'MyCustomLayer'")

    monkeypatch.setattr(tf.saved_model, "load", broken)
    loaded = tf_saved.load_signature(Model("tf-savedmodel", keras_paths["savedmodel"]))
    assert loaded.loader == "TF1 loader"
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 3)).astype("float32")
    (out,) = loaded.function(**{next(iter(loaded.function.structured_input_signature[1])): tf.constant(x)}).values()
    assert out.shape == (2, 10)


def test_index_reader_matches_tensorflow_and_rejects_truncated_files(keras_paths):
    import tensorflow as tf

    from shipyard.formats.tf_saved import read_variables_index

    index = keras_paths["savedmodel"] / "variables" / "variables.index"
    reader = tf.train.load_checkpoint(str(index.with_suffix("")))
    mine = read_variables_index(index.read_bytes())
    assert {k: s for k, (_, s) in mine.items()} == {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    with pytest.raises(ValueError):
        read_variables_index(index.read_bytes()[:-20])


def test_corrupt_tf1_variables_index_cli(simple_save_model, tmp_path):
    import shutil

    bad = tmp_path / "saved_model"
    shutil.copytree(simple_save_model, bad)
    index = bad / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:-20])
    assert_clean_error(run_cli("inspect", bad), "variables/variables.index is truncated or corrupt")


# ---------------------------------------------------------------- a real Keras 2 export


@pytest.fixture(scope="module")
def basic_pitch() -> Path:
    spec = importlib.util.find_spec("basic_pitch")  # find, do not import: it would import TF and more
    assert spec is not None, "basic-pitch is not installed: run scripts/setup"
    return Path(spec.submodule_search_locations[0]) / "saved_models" / "icassp_2022" / "nmp"


def test_basic_pitch_inspects(basic_pitch):
    """Keras 2 (tf.keras) export with Adam slots; TF 2.21's tf.saved_model.load fails on it."""
    s = inspect_model(basic_pitch)
    # 24 variables the serving function captures (18 trainable, 6 batch-norm statistics);
    # the checkpoint holds 74: + 36 Adam slots, 5 optimizer variables, 8 metric totals, the graph.
    assert s.params == 16864 and s.details["variables"] == 24
    assert [t.name for t in s.inputs] == ["input_2"] and s.inputs[0].shape == (-1, 43844, 1)
    assert [t.name for t in s.outputs] == ["contour", "note", "onset"]
    assert s.flops is not None and s.flops > 1e9


@pytest.mark.slow
def test_basic_pitch_to_tflite_keeps_its_signature(basic_pitch, tmp_path):
    r = convert_model(str(basic_pitch), "tflite", tmp_path / "nmp.tflite")
    assert r.verification.passed
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tmp_path / "nmp.tflite"))
    assert interp.get_signature_list() == {
        "serving_default": {"inputs": ["input_2"], "outputs": ["contour", "note", "onset"]}}
    assert sorted(d["name"] for d in interp.get_output_details()) == ["contour", "note", "onset"]
