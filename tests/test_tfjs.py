"""TF.js graph models: written from a frozen GraphDef, then sniffed, inspected and run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shipyard.convert.tfjs_writer import write_graph_model
from shipyard.errors import ModelFormatError, UnsupportedError
from shipyard.formats import tf_protos
from shipyard.inspection import inspect_model
from shipyard.runtimes import open_runner
from shipyard.sniff import open_model


@pytest.fixture(scope="module")
def tfjs_dir(keras_paths):
    return keras_paths["tfjs"]  # written by shipyard.convert.tfjs_writer from the frozen graph


def test_writer_refuses_what_tfjs_cannot_hold(tmp_path):
    graph_def = tf_protos.GraphDef()
    node = graph_def.node.add(name="c", op="Const")
    tensor = node.attr["value"].tensor
    tensor.dtype = 2  # float64
    tensor.double_val.append(1.0)
    with pytest.raises(UnsupportedError, match="float64"):
        write_graph_model(graph_def, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_written_model_inspects_like_its_graph(tfjs_dir, keras_paths):
    assert open_model(tfjs_dir).format == "tfjs"
    s = inspect_model(tfjs_dir)
    pb = inspect_model(keras_paths["pb"])
    assert s.ops == pb.ops
    assert s.params == pb.params
    assert s.flops == pb.flops
    assert [t.name for t in s.inputs] == ["image"] and [t.name for t in s.outputs] == ["Identity"]
    doc = json.loads((tfjs_dir / "model.json").read_text())
    assert doc["format"] == "graph-model" and doc["weightsManifest"][0]["paths"] == ["group1-shard1of1.bin"]


def test_tfjs_runs_like_keras(tfjs_dir, keras_example):
    _, _, x, ref = keras_example
    with open_runner(tfjs_dir) as runner:
        out = runner.run({"image": x})
    np.testing.assert_allclose(out["Identity"], ref, rtol=1e-4, atol=1e-5)


def test_truncated_shard(tfjs_dir, tmp_path):
    import shutil

    dst = tmp_path / "cut"
    shutil.copytree(tfjs_dir, dst)
    shard = dst / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="truncated"), open_runner(dst) as runner:
        runner.run({"image": np.zeros((1, 12, 12, 3), "float32")})


def test_uint8_weights_are_smaller_and_close(keras_example, tmp_path):
    _, paths, x, ref = keras_example
    graph_def, _ = tf_protos.parse_graph_file(paths["pb"])
    write_graph_model(graph_def, tmp_path / "q", quantize_uint8=True)
    shard = lambda d: sum(p.stat().st_size for p in d.glob("*.bin"))
    assert shard(tmp_path / "q") < 0.5 * shard(paths["tfjs"])
    with open_runner(tmp_path / "q") as runner:
        out = runner.run({"image": x})["Identity"]
    np.testing.assert_allclose(out, ref, atol=2e-2)
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.66
