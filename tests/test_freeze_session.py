"""freeze (TF1 graph + checkpoint, .meta, Keras) and the graph-session training workflow."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import assert_clean_error, cli_inprocess
from shipyard.inspection import inspect_model
from shipyard.runtimes import open_runner


def test_freeze_graph_with_checkpoint_dir(tf1_graph, tmp_path, capsys):
    out = tmp_path / "frozen.pb"
    proc = cli_inprocess(capsys, "freeze", tf1_graph["graph"], "--checkpoint", tf1_graph["directory"], "--output-nodes", "probs", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verification"]["passed"] and doc["verification"]["outputs"]["probs"]["max_abs"] == 0.0
    s = inspect_model(out)
    assert s.details["variable_params"] == 0 and s.details["devices"] == []
    assert [t.name for t in s.inputs] == ["x"] and [t.name for t in s.outputs] == ["probs"]
    assert not any(op in s.ops for op in ("VarHandleOp", "SaveV2", "ResourceApplyAdam", "NoOp"))
    # the frozen graph holds the checkpoint's values: same answer as the restored TF1 graph
    x = np.random.default_rng(3).standard_normal((5, 8)).astype("float32")
    with open_runner(tf1_graph["checkpoint"]) as live, open_runner(out) as frozen:
        y = np.zeros((5, 3), "float32")
        np.testing.assert_allclose(frozen.run({"x": x})["probs"], live.run({"x": x, "y": y})["probs"], rtol=1e-6)


def test_freeze_meta_and_keras(tf1_graph, keras_paths, tmp_path, capsys):
    proc = cli_inprocess(capsys, "freeze", tf1_graph["meta"], "-o", tmp_path / "a.pbtxt")
    assert proc.returncode == 0, proc.stderr
    assert "verified   yes" in proc.stdout
    assert inspect_model(tmp_path / "a.pbtxt").format == "tf-graphdef"
    proc = cli_inprocess(capsys, "freeze", keras_paths["keras"], "-o", tmp_path / "k.pb")
    assert proc.returncode == 0 and "verified   yes" in proc.stdout, proc.stderr


def test_freeze_bad_input(tf1_graph, tmp_path, models_dir, capsys):
    from shipyard import examples

    other = examples.tf1_training_graph(models_dir / "tf1_other", seed=5)
    # a checkpoint of a graph with other shapes
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        v1.get_variable("dense1/kernel", [8, 32])
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            bad = saver.save(sess, str(tmp_path / "bad" / "model.ckpt"))
    out = tmp_path / "f.pb"
    assert_clean_error(cli_inprocess(capsys, "freeze", tf1_graph["graph"], "--checkpoint", bad, "-o", out), "does not match the graph")
    assert not out.exists()
    assert_clean_error(cli_inprocess(capsys, "freeze", tf1_graph["graph"], "--checkpoint", other["checkpoint"], "--output-nodes", "prob", "-o", out), "did you mean 'probs'")
    assert_clean_error(cli_inprocess(capsys, "freeze", tf1_graph["graph"], "-o", out), "needs --checkpoint")
    assert_clean_error(cli_inprocess(capsys, "freeze", tf1_graph["graph"], "--checkpoint", other["checkpoint"], "-o", tf1_graph["graph"]), "overwrite")


def test_session_classic_workflow(tf1_graph, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = np.eye(3, dtype="float32")[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0)]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ckpt_dir = tmp_path / "ckpt"
    feeds = ["--inputs", f"x={tmp_path / 'x.npy'}", "--inputs", f"y={tmp_path / 'y.npy'}"]

    proc = cli_inprocess(capsys, "session", tf1_graph["graph"], "--list", "--json")
    roles = json.loads(proc.stdout)
    assert roles["init_op"] == "init" and roles["train_ops"] == ["train"]
    assert roles["saver"]["restore_op"] == "save/restore_all" and roles["inputs"] == ["x", "y"]

    first = cli_inprocess(capsys, "session", tf1_graph["graph"], *feeds, "--restore-or-init", ckpt_dir, "--fetch", "loss",
                    "--run", "train:60", "--fetch", "loss", "--save", ckpt_dir / "model.ckpt", "--json")
    assert first.returncode == 0, first.stderr
    steps = json.loads(first.stdout)["steps"]
    assert [s["step"] for s in steps] == ["init", "fetch", "run", "fetch", "save"]
    before, after = steps[1]["mean"], steps[3]["mean"]
    assert after < before * 0.5  # training worked
    assert (ckpt_dir / "checkpoint").is_file()

    second = cli_inprocess(capsys, "session", tf1_graph["graph"], *feeds, "--restore-or-init", ckpt_dir, "--fetch", "loss",
                     "-o", tmp_path / "fetched.npz", "--json")
    steps2 = json.loads(second.stdout)["steps"]
    assert steps2[0]["step"] == "restore"
    assert steps2[1]["mean"] == pytest.approx(after, rel=1e-6)
    assert list(np.load(tmp_path / "fetched.npz").keys()) == ["0:loss"]


def test_session_fetches_a_variables_values_not_its_handle(tf1_graph, tmp_path, capsys):
    """``--fetch dense1/kernel`` (a resource variable) gives its values after restore, equal to
    what the checkpoint holds, not the resource handle TensorFlow returns for the op's output."""
    import tensorflow as tf

    out = tmp_path / "w.npz"
    proc = cli_inprocess(capsys, "session", tf1_graph["graph"], "--restore", tf1_graph["checkpoint"], "--fetch", "dense1/kernel",
                   "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    step = json.loads(proc.stdout)["steps"][1]
    assert step["dtype"] == "float32" and step["shape"] == [8, 16], step
    saved = tf.train.load_checkpoint(str(tf1_graph["checkpoint"])).get_tensor("dense1/kernel")
    np.testing.assert_array_equal(np.load(out)["0:dense1/kernel"], saved)


def test_session_bad_input(tf1_graph, keras_paths, tmp_path, capsys):
    assert_clean_error(cli_inprocess(capsys, "session", tf1_graph["graph"], "--init", "--run", "trian"), "did you mean 'train'")
    assert_clean_error(cli_inprocess(capsys, "session", keras_paths["pb"], "--save", tmp_path / "m.ckpt"), "no saver ops")
    assert_clean_error(cli_inprocess(capsys, "session", keras_paths["onnx"], "--list"), "needs a GraphDef")
    copy = tmp_path / "g"
    shutil.copytree(tf1_graph["directory"], copy)
    assert_clean_error(cli_inprocess(capsys, "session", copy / "graph.pb", "--init", "--fetch", "loss"), "fetching 'loss' failed")
