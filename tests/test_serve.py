"""`shipyard serve` end to end, spoken to by clients nobody here wrote: tritonclient (HTTP and
gRPC), tensorflow-serving-api's gRPC stubs, and plain HTTP for TF Serving's REST API."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from shipyard import examples

SERVE = "import sys; from shipyard.cli import main; sys.exit(main(sys.argv[1:]))"


class Server:
    """A real `shipyard serve` process on free ports."""

    def __init__(self, repo: Path, *extra: str):
        self.repo = repo
        self.ready_file = repo.parent / f"ready-{repo.name}.json"
        self.ready_file.unlink(missing_ok=True)
        self.log = open(repo.parent / f"serve-{repo.name}.log", "w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", str(repo), "--rest-port", "0", "--grpc-port", "0",
             "--poll-seconds", "0.5", "--ready-file", str(self.ready_file), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not self.ready_file.exists():
            assert self.proc.poll() is None, self.output()
            assert time.time() < deadline, self.output()
            time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.rest = f"http://127.0.0.1:{info['rest_port']}"
        self.grpc = f"127.0.0.1:{info['grpc_port']}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.time() + timeout
        while not predicate():
            assert time.time() < deadline, self.output()[-3000:]
            time.sleep(0.05)


def add_version(repo: Path, model: str, version: int, seed: int | None = None) -> dict:
    """Write a version the way deploy tools should: build it aside, then rename it into place."""
    staging = repo.parent / f".staging-{model}-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    weights = examples.onnx_mlp(staging / "model.onnx", seed=version if seed is None else seed)
    (repo / model).mkdir(parents=True, exist_ok=True)
    staging.rename(repo / model / str(version))
    return weights


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("serve") / "repo"
    weights = {v: add_version(repo, "mlp", v) for v in (1, 2)}
    (repo / "mlp" / "config.json").write_text(json.dumps({
        "version_policy": {"all": {}}, "labels": {"stable": 1, "canary": 2},
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 2}}))
    server = Server(repo)
    server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200)
    yield server, weights
    assert server.stop() == 0


X = np.random.default_rng(7).standard_normal((3, 16)).astype("float32")


def test_tritonclient_http_metadata_and_binary_and_json_inference(served):
    import tritonclient.http as httpclient

    server, weights = served
    client = httpclient.InferenceServerClient(server.rest.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert sorted(meta["versions"]) == ["1", "2"]
    for binary in (True, False):
        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        out = httpclient.InferRequestedOutput("y", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out], model_version="1")
        np.testing.assert_allclose(result.as_numpy("y"), examples.mlp_reference(weights[1], X), rtol=1e-5, atol=1e-5)
    result = client.infer("mlp", [inp])  # no version: the latest
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("y"), examples.mlp_reference(weights[2], X), rtol=1e-5, atol=1e-5)


def test_tritonclient_grpc(served):
    import tritonclient.grpc as grpcclient

    server, weights = served
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and not client.is_model_ready("mlp", "9")
    assert client.get_server_metadata().name == "shipyard"
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32"
    inp = grpcclient.InferInput("x", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("mlp", [inp], model_version="1", outputs=[grpcclient.InferRequestedOutput("y")])
    np.testing.assert_allclose(result.as_numpy("y"), examples.mlp_reference(weights[1], X), rtol=1e-5, atol=1e-5)
    from tritonclient.utils import InferenceServerException

    bad = grpcclient.InferInput("x", [3, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((3, 5), "float32"))
    with pytest.raises(InferenceServerException, match="dimension 1 must be 16"):
        client.infer("mlp", [bad])


def test_tensorflow_serving_grpc_predict_metadata_status(served):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    server, weights = served
    channel = grpc.insecure_channel(server.grpc)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mlp"
    request.model_spec.version_label = "stable"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    reply = stub.Predict(request, timeout=10)
    assert reply.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["y"]), examples.mlp_reference(weights[1], X), rtol=1e-5, atol=1e-5)
    # Values given as float_val (not tensor_content) decode too
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X.tolist(), dtype=tf.float32))
    request.model_spec.version.value = 2
    reply = stub.Predict(request, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["y"]), examples.mlp_reference(weights[2], X), rtol=1e-5, atol=1e-5)

    meta_req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_req.model_spec.name = "mlp"
    meta = stub.GetModelMetadata(meta_req, timeout=10)
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(sigmap)
    sig = sigmap.signature_def["serving_default"]
    assert sig.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.inputs["x"].tensor_shape.dim] == [-1, 16]

    status_req = get_model_status_pb2.GetModelStatusRequest()
    status_req.model_spec.name = "mlp"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_req, timeout=10)
    assert sorted((s.version, s.state) for s in status.model_version_status) == [(1, 30), (2, 30)]

    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_tf_serving_rest_rows_columns_versions_labels(served):
    server, weights = served
    base = f"{server.rest}/v1/models/mlp"
    status = requests.get(base).json()["model_version_status"]
    assert {s["version"]: s["state"] for s in status} == {"1": "AVAILABLE", "2": "AVAILABLE"}
    assert requests.get(f"{base}/versions/1").json()["model_version_status"][0]["version"] == "1"
    meta = requests.get(f"{base}/metadata").json()
    assert meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    rows = requests.post(f"{base}/labels/canary:predict", json={"instances": X.tolist()}).json()
    np.testing.assert_allclose(rows["predictions"], examples.mlp_reference(weights[2], X), rtol=1e-4, atol=1e-4)
    cols = requests.post(f"{base}/versions/1:predict", json={"inputs": {"x": X.tolist()}}).json()
    np.testing.assert_allclose(cols["outputs"], examples.mlp_reference(weights[1], X), rtol=1e-4, atol=1e-4)
    named_rows = requests.post(f"{base}:predict", json={"instances": [{"x": r} for r in X.tolist()]}).json()
    np.testing.assert_allclose(named_rows["predictions"], examples.mlp_reference(weights[2], X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [[1.0, 2.0]]}, "dimension 1 must be 16"),
    ({"instances": [{"b64": "AAAA"}]}, "takes float32 numbers"),
    ({"instances": [{"b64": "!!"}]}, "not valid base64"),
    ({"inputs": {"z": [[0.0] * 16]}}, "unknown input name 'z'"),
    ({"instances": [[0.0] * 16], "inputs": [[0.0] * 16]}, "exactly one of"),
    ({"instances": [[1, 2], [3]]}, "rectangular"),
    ([1, 2], "JSON object"),
])
def test_tf_serving_rest_bad_requests_say_what_is_wrong(served, body, fragment):
    server, _ = served
    reply = requests.post(f"{server.rest}/v1/models/mlp:predict", json=body)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]


def test_kserve_rest_errors_and_unsafe_names(served):
    server, _ = served
    infer = f"{server.rest}/v2/models/mlp/infer"
    bad_type = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP99", "data": [0] * 16}]}
    assert "unknown datatype" in requests.post(infer, json=bad_type).json()["error"]
    short = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 3}]}
    assert "needs 16 values, got 3" in requests.post(infer, json=short).json()["error"]
    wrong_dtype = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT64", "data": [0] * 16}]}
    reply = requests.post(infer, json=wrong_dtype)
    assert reply.status_code == 400 and "expected dtype float32" in reply.json()["error"]
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    reply = requests.post(infer, data=header + b"\0" * 10, headers={"Inference-Header-Content-Length": str(len(header))})
    assert reply.status_code == 400 and "binary_data_size" in reply.json()["error"]
    import http.client

    host, port = server.rest.removeprefix("http://").split(":")
    for name in ("..", "../..", "..%2F..%2Fetc", "%2E%2E", "mlp%2F..%2F..", "a/../../mlp", "mlp/../mlp"):
        for path in (f"/v2/models/{name}", f"/v1/models/{name}", f"/v1/models/{name}:predict"):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)  # sent as is, no dot-segment cleanup
            conn.request("GET" if not path.endswith("predict") else "POST", path, body=b"{}")
            assert conn.getresponse().status in (400, 404), path
            conn.close()
    assert requests.get(f"{server.rest}/v2/models/nope/ready").status_code == 404
    assert requests.get(f"{server.rest}/v1/models/mlp/versions/abc").status_code == 400


def test_metrics_and_access_log(served):
    server, _ = served
    requests.post(f"{server.rest}/v1/models/mlp:predict", json={"instances": X.tolist()})
    text = requests.get(f"{server.rest}/metrics").text
    assert 'shipyard_requests_total{code="200",model="mlp",protocol="tfserving"}' in text
    assert 'shipyard_loaded_versions{model="mlp"} 2.0' in text
    assert "shipyard_batch_size_bucket" in text and "shipyard_queue_seconds_bucket" in text
    assert "shipyard_request_latency_seconds_bucket" in text
    logged = [json.loads(line) for line in server.output().splitlines() if line.startswith('{"ts"')]
    assert any(e["path"] == "/v1/models/mlp:predict" and e["status"] == 200 for e in logged)


def test_malformed_requests_get_4xx_never_5xx(served):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server, _ = served
    json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
                               lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                               max_leaves=12)
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["x", "y", ""]) | st.text(max_size=3),
                                    "shape": st.lists(st.integers(-2, 20), max_size=3) | json_values,
                                    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "XX"]) | json_values,
                                    "data": json_values})
    bodies = st.one_of(json_values, st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=2)}),
                       st.fixed_dictionaries({"instances": json_values}), st.fixed_dictionaries({"inputs": json_values}))
    paths = st.sampled_from(["/v2/models/mlp/infer", "/v1/models/mlp:predict", "/v2/models/mlp/versions/1/infer",
                             "/v1/models/mlp/labels/stable:predict"])
    session = requests.Session()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, body=bodies, raw=st.binary(max_size=40), use_raw=st.booleans())
    def check(path, body, raw, use_raw):
        data = raw if use_raw else json.dumps(body)
        reply = session.post(server.rest + path, data=data)
        assert reply.status_code < 500, (path, data, reply.text)

    check()
    assert requests.get(f"{server.rest}/v2/health/live").json() == {"live": True}


def test_hot_reload_under_load_and_broken_version(tmp_path):
    repo = tmp_path / "repo"
    weights = {1: add_version(repo, "mlp", 1)}
    server = Server(repo, "--no-access-log")
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200)
        live: dict[int, float] = {1: time.time()}   # version -> when it appeared on disk
        gone: dict[int, float] = {}
        failures, answers, stop = [], [], threading.Event()
        xb = X[:1]

        def client():
            session = requests.Session()
            body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": xb.ravel().tolist()}]}
            while not stop.is_set():
                sent = time.time()
                reply = session.post(f"{server.rest}/v2/models/mlp/infer", json=body)
                if reply.status_code != 200:
                    failures.append((reply.status_code, reply.text))
                    continue
                got = reply.json()
                answers.append((sent, time.time(), int(got["model_version"]), np.array(got["outputs"][0]["data"])))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for v in range(2, 22):  # 20 swaps: copy the new version in, remove the one before the last
            weights[v] = add_version(repo, "mlp", v)
            live[v] = time.time()
            time.sleep(0.15)
            if v - 2 >= 1:
                shutil.rmtree(repo / "mlp" / str(v - 2))
                gone[v - 2] = time.time()
            time.sleep(0.1)
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/mlp").json().get("versions") == ["21"])
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert not failures, failures[:5]
        seen = {v for _, _, v, _ in answers}
        assert len(answers) > 100 and len(seen) >= 5 and 21 in seen, (len(answers), seen)
        for sent, received, version, y in answers:
            assert live[version] <= received, "answered by a version before it existed"
            assert version not in gone or sent <= gone[version] + 5.0
            np.testing.assert_allclose(y, examples.mlp_reference(weights[version], xb).ravel(), rtol=1e-4, atol=1e-4)

        # A broken (truncated) version does not take the model down; the previous one keeps serving.
        broken = repo.parent / ".broken"
        broken.mkdir()
        good = (repo / "mlp" / "21" / "model.onnx").read_bytes()
        (broken / "model.onnx").write_bytes(good[: len(good) // 3])
        broken.rename(repo / "mlp" / "22")
        server.wait_for(lambda: any(s["version"] == "22" and s["status"]["error_message"]
                                    for s in requests.get(f"{server.rest}/v1/models/mlp").json()["model_version_status"]))
        reply = requests.post(f"{server.rest}/v1/models/mlp:predict", json={"instances": xb.tolist()})
        assert reply.status_code == 200
        np.testing.assert_allclose(reply.json()["predictions"], examples.mlp_reference(weights[21], xb), rtol=1e-4, atol=1e-4)
        # A removed model is unloaded.
        shutil.rmtree(repo / "mlp")
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/mlp").status_code == 404)
    finally:
        assert server.stop() == 0


def test_auth_token_and_graceful_sigterm(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "mlp", 1)
    (repo / "mlp" / "config.json").write_text(json.dumps({"batching": {"max_batch_size": 4, "max_queue_delay_ms": 300}}))
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = Server(repo, "--auth-token-file", str(token), "--max-request-mb", "0.01")
    url = f"{server.rest}/v1/models/mlp:predict"
    ok = {"Authorization": "Bearer s3cret"}
    server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200)
    assert requests.post(url, json={"instances": X.tolist()}).status_code == 401
    assert requests.post(url, json={"instances": X.tolist()}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert requests.get(f"{server.rest}/v2/models/mlp", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert requests.post(url, json={"instances": X.tolist()}, headers=ok).status_code == 200
    too_big = requests.post(url, json={"instances": np.zeros((200, 16)).tolist()}, headers=ok)
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]

    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="token"):
        grpcclient.InferenceServerClient(server.grpc).get_model_metadata("mlp")
    assert grpcclient.InferenceServerClient(server.grpc).get_model_metadata("mlp", headers={"authorization": "Bearer s3cret"}).name == "mlp"
    del grpc

    # SIGTERM while requests wait in the batcher (300 ms queue delay): they still get answers.
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        requests.post(url, json={"instances": X[:1].tolist()}, headers=ok).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert server.stop() == 0
    for t in threads:
        t.join()
    assert results == [200, 200], server.output()[-2000:]


def test_bad_command_lines_are_clean_errors(tmp_path):
    import socket

    from conftest import assert_clean_error, run_cli

    assert_clean_error(run_cli("serve", tmp_path / "missing"), "is not a directory")
    repo = tmp_path / "repo"
    add_version(repo, "mlp", 1)
    assert_clean_error(run_cli("serve", repo, "--auth-token-file", tmp_path / "nope"), "cannot read the auth token file")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_clean_error(run_cli("serve", repo, "--rest-port", str(port), "--grpc-port", "0"), "cannot listen on")
        assert_clean_error(run_cli("serve", repo, "--rest-port", "0", "--grpc-port", str(port)), "cannot listen for gRPC")
