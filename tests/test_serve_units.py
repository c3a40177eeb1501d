"""The server's parts on their own: batcher, repository policy, manager, message definitions."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from shipyard import examples
from shipyard.errors import UsageError
from shipyard.serve.batcher import Batcher
from shipyard.serve.errors import NotFoundError, QueueFullError, UnavailableError
from shipyard.serve.repository import BatchingConfig, ModelConfig, parse_config, valid_model_name


def test_batcher_merges_concurrent_requests_and_splits_answers():
    w = np.arange(12, dtype="float32").reshape(4, 3)
    sizes = []

    def run(feeds):
        sizes.append(feeds["x"].shape[0])
        time.sleep(0.01)
        return {"y": feeds["x"] @ w}

    batcher = Batcher(run, BatchingConfig(max_batch_size=8, max_queue_delay_ms=50, preferred_batch_sizes=(4,)))
    xs = [np.full((1, 4), i, "float32") for i in range(4)] + [np.full((2, 4), 9, "float32")]
    futures = [batcher.submit({"x": x}) for x in xs]
    results = [f.result(timeout=5)["y"] for f in futures]
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, x @ w)
    assert sizes[0] == 4, sizes  # left as soon as it reached the preferred size
    assert sum(sizes) == 6
    batcher.close()


def test_batcher_keeps_incompatible_requests_apart():
    seen = []
    batcher = Batcher(lambda f: (seen.append(f["x"].shape), {"y": f["x"].sum(axis=1)})[1],
                      BatchingConfig(max_batch_size=8, max_queue_delay_ms=30))
    a = batcher.submit({"x": np.ones((1, 3), "float32")})
    b = batcher.submit({"x": np.ones((1, 5), "float32")})
    assert a.result(5).tolist() if False else a.result(5)["y"].tolist() == [3.0]
    assert b.result(5)["y"].tolist() == [5.0]
    assert sorted(seen) == [(1, 3), (1, 5)]
    batcher.close()


def test_batcher_queue_is_bounded_and_close_drains():
    gate = threading.Event()
    batcher = Batcher(lambda f: (gate.wait(5), {"y": f["x"]})[1], BatchingConfig(max_queue_size=2))
    first = batcher.submit({"x": np.zeros((1, 1))})
    time.sleep(0.05)  # the worker holds `first`; two more fill the queue
    queued = [batcher.submit({"x": np.full((1, 1), i)}) for i in (1, 2)]
    with pytest.raises(QueueFullError, match="queue is full"):
        batcher.submit({"x": np.zeros((1, 1))})
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(UnavailableError):
        batcher.submit({"x": np.zeros((1, 1))})
    gate.set()
    closer.join(5)
    assert first.result(1)["y"].tolist() == [[0.0]]
    assert [q.result(1)["y"].tolist() for q in queued] == [[[1.0]], [[2.0]]]


def test_version_policies_and_config_errors():
    assert ModelConfig().aspired([3, 1, 2]) == [3]
    assert parse_config({"version_policy": {"latest": 2}}, "c").aspired([1, 2, 3]) == [2, 3]
    assert parse_config({"version_policy": "all"}, "c").aspired([2, 1]) == [1, 2]
    assert parse_config({"version_policy": {"specific": [1, 5]}}, "c").aspired([1, 2, 3]) == [1]
    cfg = parse_config({"backend": "ort", "threads": 2, "batching": {"max_batch_size": 16, "preferred_batch_sizes": [8, 4]}}, "c")
    assert cfg.backend == "onnxruntime" and cfg.batching.preferred_batch_sizes == (4, 8)
    for bad, fragment in [({"version_policy": {"latest": 0}}, "version_policy"), ({"colour": 1}, "unknown key"),
                          ({"labels": {"stable": "one"}}, "labels"), ({"batching": {"max_batch_size": 0}}, "positive"),
                          ({"backend": "tensorrt"}, "unknown backend")]:
        with pytest.raises(UsageError, match=fragment):
            parse_config(bad, "c")
    assert valid_model_name("resnet-50_v1.2")
    for bad in ("..", "a..b", ".hidden", "a/b", "a\\b", "", "x" * 200):
        assert not valid_model_name(bad), bad


def _wait(predicate, timeout=20):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline
        time.sleep(0.02)


def test_manager_labels_latest_n_and_bad_config_keeps_serving(tmp_path):
    from shipyard.serve.manager import Manager

    for v in (1, 2, 3):
        examples.onnx_mlp(tmp_path / "m" / str(v) / "model.onnx", seed=v)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": {"latest": 2}, "labels": {"stable": 2}}))
    manager = Manager(tmp_path)
    try:
        manager.sync()
        _wait(manager.ready)
        assert [s.version for s in manager.status("m")] == [2, 3]
        assert manager.resolve("m").version == 3 and manager.resolve("m", label="stable").version == 2
        with pytest.raises(NotFoundError, match="no label 'canary'"):
            manager.resolve("m", label="canary")
        with pytest.raises(NotFoundError):
            manager.resolve("m", version=1)
        (tmp_path / "m" / "config.json").write_text("{not json")
        manager.sync()
        assert manager.resolve("m").version == 3 and manager.model("m").config_error
        runner = manager.resolve("m").runner
        (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": {"specific": [1]}}))
        manager.sync()
        _wait(lambda: [s.version for s in manager.status("m")] == [1])
        assert runner is not None and manager.resolve("m").version == 1
    finally:
        manager.shutdown()


def test_grpc_messages_match_the_public_definitions():
    """Same field numbers and types as tritonclient's and tensorflow-serving-api's own modules."""
    pytest.importorskip("tensorflow_serving")
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2
    from tritonclient.grpc import service_pb2

    from shipyard.serve.protos import kserve_pb2, tfserving_pb2

    def fields(desc, depth=0):
        out = {}
        for f in desc.fields:
            out[f.name] = (f.number, f.type, f.is_repeated)
            if f.message_type is not None and depth < 3 and f.message_type.full_name not in ("google.protobuf.Any",):
                out.update({f"{f.name}.{k}": v for k, v in fields(f.message_type, depth + 1).items()})
        return out

    from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2
    from tritonclient.grpc import model_config_pb2

    pairs = [(getattr(kserve_pb2, n), getattr(service_pb2, n)) for n in (
        "ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataResponse",
        "ModelMetadataRequest", "ModelMetadataResponse", "ModelInferRequest", "ModelInferResponse",
        "ModelConfigRequest", "ModelConfigResponse", "ModelStatisticsRequest", "ModelStatisticsResponse",
        "RepositoryIndexRequest", "RepositoryIndexResponse")]
    pairs += [(getattr(kserve_pb2, n), getattr(model_config_pb2, n)) for n in (
        "ModelConfig", "ModelInput", "ModelOutput", "ModelVersionPolicy", "ModelDynamicBatching", "ModelInstanceGroup")]
    pairs += [(getattr(tfserving_pb2, n), getattr(module, n)) for module, names in (
        (classification_pb2, ("ClassificationRequest", "ClassificationResponse", "ClassificationResult")),
        (regression_pb2, ("RegressionRequest", "RegressionResponse", "RegressionResult")),
        (inference_pb2, ("MultiInferenceRequest", "MultiInferenceResponse", "InferenceTask", "InferenceResult")),
        (input_pb2, ("Input", "ExampleList", "ExampleListWithContext"))) for n in names]
    assert [v.name for v in kserve_pb2.DataType.DESCRIPTOR.values] == [v.name for v in model_config_pb2.DataType.DESCRIPTOR.values]
    pairs += [(tfserving_pb2.ModelSpec, model_pb2.ModelSpec), (tfserving_pb2.PredictRequest, predict_pb2.PredictRequest),
              (tfserving_pb2.PredictResponse, predict_pb2.PredictResponse),
              (tfserving_pb2.SignatureDefMap, get_model_metadata_pb2.SignatureDefMap),
              (tfserving_pb2.GetModelMetadataRequest, get_model_metadata_pb2.GetModelMetadataRequest),
              (tfserving_pb2.GetModelStatusResponse, get_model_status_pb2.GetModelStatusResponse)]
    for ours, theirs in pairs:
        mine, public = fields(ours.DESCRIPTOR), fields(theirs.DESCRIPTOR)
        for name, spec in mine.items():
            theirs_spec = public.get(name)
            if name.endswith("error_code") and theirs_spec is not None:  # int32 here, an enum there: both varints
                theirs_spec = (theirs_spec[0], spec[1], theirs_spec[2])
            if name.split(".")[-1] in ("examples", "context") and theirs_spec is not None and theirs_spec[1] == 11:
                theirs_spec = (theirs_spec[0], spec[1], theirs_spec[2])  # a tf.Example here as bytes: same wire type
            assert theirs_spec == spec, (ours.DESCRIPTOR.full_name, name, spec, theirs_spec)


def test_serving_onnx_imports_neither_tensorflow_nor_torch(tmp_path):
    examples.onnx_mlp(tmp_path / "m" / "1" / "model.onnx")
    code = f"""
import sys, time
from shipyard.serve import rest, grpc_server
from shipyard.serve.manager import Manager
m = Manager({str(tmp_path)!r}); m.sync()
while not m.ready(): time.sleep(0.01)
s, fut = m.submit("m", {{"x": __import__("numpy").ones((2, 16), "float32")}})
assert fut.result(5)["y"].shape == (2, 4)
m.shutdown()
print(sorted(k for k in ("tensorflow", "torch", "keras", "tensorflow_serving", "tritonclient") if k in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_versions_are_ascii_digits_only(tmp_path, caplog):
    from shipyard.errors import InputError
    from shipyard.serve.protocol import parse_version
    from shipyard.serve.repository import scan

    assert parse_version("12") == 12 and parse_version("") is None
    for bad in ("²", "١", "１", "①", "1²", "-1", "1 ", "9" * 19):
        with pytest.raises(InputError, match="version"):
            parse_version(bad)
    for name in ("1", "²", "١", "v2", ".staging"):
        examples.onnx_mlp(tmp_path / "m" / name / "model.onnx")
    ignored: set[str] = set()
    with caplog.at_level("WARNING", logger="shipyard.serve"):
        for _ in range(3):
            assert list(scan(tmp_path, ignored)["m"].versions) == [1]
    assert len(caplog.records) == 3  # one line per ignored directory, not one per scan
    for name in ("v2", "²", "١"):
        assert sum(f"/m/{name} " in r.getMessage() for r in caplog.records) == 1, name


def test_tensor_proto_sizes_are_admitted_before_allocating():
    from shipyard.errors import InputError
    from shipyard.model import Signature, TensorSpec
    from shipyard.serve.codec import Limits, from_tensor_proto
    from shipyard.serve.errors import TooLargeError
    from shipyard.serve.protos import tfserving_pb2 as tpb

    def proto(dims, field, values, dtype=1):
        tp = tpb.PredictRequest().inputs["x"]
        tp.dtype = dtype
        for d in dims:
            tp.tensor_shape.dim.add().size = d
        getattr(tp, field).extend(values)
        return tp

    sig = Signature(inputs=(TensorSpec("x", "float32", ("batch", 16)),), outputs=())
    # TF's rule: fewer values than the shape holds are filled with the last one
    np.testing.assert_array_equal(from_tensor_proto(proto([2, 16], "float_val", [1.0, 2.0]), "x", Limits(sig, 1 << 20), "x"),
                                  np.array([1.0] + [2.0] * 31, np.float32).reshape(2, 16))
    with pytest.raises(InputError, match="holds 16 values, got 17"):
        from_tensor_proto(proto([1, 16], "float_val", [1.0] * 17), "x", Limits(sig, 1 << 20), "x")
    with pytest.raises(InputError, match="expected rank 2"):
        from_tensor_proto(proto([268435456], "double_val", [1.0], dtype=2), "x", Limits(sig, 1 << 20), "x")
    with pytest.raises(InputError, match="dimension 1 must be 16"):
        from_tensor_proto(proto([1, 17], "float_val", [1.0]), "x", Limits(sig, 1 << 20), "x")
    with pytest.raises(TooLargeError, match="above the limit"):
        from_tensor_proto(proto([1 << 20, 16], "float_val", [1.0]), "x", Limits(sig, 1 << 20), "x")
    with pytest.raises(InputError, match="unknown input name 'z'"):
        from_tensor_proto(proto([1, 16], "float_val", [1.0]), "z", Limits(sig, 1 << 20), "z")
    with pytest.raises(InputError, match="do not fit"):
        from_tensor_proto(proto([1, 1], "int_val", [300], dtype=4), "x", Limits(), "x")  # 300 in a uint8
