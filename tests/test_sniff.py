"""Formats are recognised by content, and anything else gets one clear line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from shipyard.errors import ModelFormatError, ModelLoadError, ShipyardError
from shipyard.inspection import inspect_model
from shipyard.sniff import open_model

KERAS_FORMATS = {
    "keras": "keras", "h5": "keras", "savedmodel": "tf-savedmodel", "pb": "tf-graphdef",
    "pbtxt": "tf-graphdef", "tflite": "tflite", "onnx": "onnx", "tfjs": "tfjs",
}


@pytest.mark.parametrize("name,fmt", sorted(KERAS_FORMATS.items()))
def test_keras_family_is_recognised_by_content(keras_paths, tmp_path, name, fmt):
    src = keras_paths[name]
    # Rename to a misleading extension: only the bytes may decide.
    dst = tmp_path / ("renamed" if src.is_dir() else "renamed.bin")
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    assert open_model(dst).format == fmt


def test_checkpoint_forms(tf1_graph):
    prefix = tf1_graph["checkpoint"]
    for given in (prefix, prefix.with_name(prefix.name + ".index"), tf1_graph["directory"], tf1_graph["meta"]):
        model = open_model(given)
        assert model.format == "tf-checkpoint"
        assert model.path.name == prefix.name
        assert model.extras["meta"].name == prefix.name + ".meta"
    assert open_model(tf1_graph["graph"]).format == "tf-graphdef"


def test_torch_family(torch_example):
    _, paths, _, _ = torch_example
    assert open_model(paths["torchscript"]).format == "torchscript"
    assert open_model(paths["onnx"]).format == "onnx"


def test_tfjs_model_json(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": []}, "weightsManifest": []}))
    assert open_model(tmp_path).format == "tfjs"
    assert open_model(tmp_path / "model.json").format == "tfjs"


# ---------------------------------------------------------------- bad input


def _fail(path, *fragments):
    with pytest.raises(ShipyardError) as info:
        inspect_model(path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def test_empty_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"")
    _fail(p, "empty")


def test_random_bytes(tmp_path):
    p = tmp_path / "model.tflite"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = _fail(p, "not a model shipyard recognises")
    assert "expected one of" in str(err)


def test_directory_with_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _fail(tmp_path, "directory with no model", "notes.txt")


def test_missing_path(tmp_path):
    _fail(tmp_path / "nope.onnx", "no such file")


def test_json_that_is_not_tfjs(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"layers": 3}')
    _fail(p, "not a TF.js model.json")


def test_torch_state_dict_is_a_checkpoint_that_cannot_run(tmp_path):
    import torch

    from shipyard.runtimes import open_runner

    p = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, p)
    assert open_model(p).format == "torch-checkpoint"
    with pytest.raises(ShipyardError, match="weights, not a program"):
        open_runner(p)


@pytest.mark.parametrize("name", ["onnx", "tflite", "pb", "keras", "h5", "pbtxt"])
def test_truncated_file(keras_paths, tmp_path, name):
    src = keras_paths[name]
    data = src.read_bytes()
    p = tmp_path / src.name
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises((ModelFormatError, ModelLoadError)) as info:
        inspect_model(p)
    assert str(p) in str(info.value)


def test_truncated_torchscript(torch_example, tmp_path):
    src = torch_example[1]["torchscript"]
    p = tmp_path / "model.pt"
    p.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(ShipyardError, match="zip|torch.jit.load"):
        inspect_model(p)


def test_truncated_savedmodel(keras_paths, tmp_path):
    dst = tmp_path / "sm"
    shutil.copytree(keras_paths["savedmodel"], dst)
    pb = dst / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:3000])
    _fail(dst, "saved_model.pb")


def test_truncated_checkpoint_index(tf1_graph, tmp_path):
    for f in tf1_graph["directory"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    index = tmp_path / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:100])
    _fail(tmp_path / "model.ckpt", "checkpoint")


def test_cli_bad_inputs_exit_2_without_traceback(tmp_path, keras_paths):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_clean_error(run_cli("inspect", empty), "empty")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    assert_clean_error(run_cli("inspect", junk, "--json"), "not a model")
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(keras_paths["tflite"].read_bytes()[:3000])
    assert_clean_error(run_cli("run", truncated), "truncated")
    assert_clean_error(run_cli("inspect", tmp_path / "missing.pb"), "no such file")
