"""shipyard.paired with a real engine (onnxruntime): contenders in processes of their own, timed
in alternating bursts; the per-cycle ratios must see a 64x difference in work, and a contender
that cannot load is one clean error naming it."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from shipyard import paired
from shipyard.errors import ShipyardError


def _matmuls(path, width: int, depth: int):
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) / width, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width])], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def test_paired_bursts_separate_a_heavy_model_from_a_light_one(tmp_path):
    light = _matmuls(tmp_path / "light.onnx", 128, 2)   # 32 K multiply-adds
    heavy = _matmuls(tmp_path / "heavy.onnx", 512, 8)   # 2 M: 64x the work
    got = paired.interleave([("light", paired.runner_call, (light, "onnxruntime", 1)),
                             ("heavy", paired.runner_call, (heavy, "onnxruntime", 1))], cycles=5, burst=5, warmup=2)
    assert got.labels == ["light", "heavy"] and len(got.cycles_ms) == 5
    assert all(ms > 0 for row in got.cycles_ms for ms in row)
    assert got.ratio(1, 0) > 4 and got.ratio(0, 1) < 0.25
    assert got.ratio(0, 1) == pytest.approx(float(np.median(got.ratios(0, 1))))


def test_a_contender_that_cannot_load_is_one_error_naming_it(tmp_path):
    light = _matmuls(tmp_path / "light.onnx", 16, 1)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ShipyardError, match="^broken one: "):
        paired.interleave([("light", paired.runner_call, (light, "onnxruntime", 1)),
                           ("broken one", paired.runner_call, (str(broken), "onnxruntime", 1))], cycles=3, burst=2)
