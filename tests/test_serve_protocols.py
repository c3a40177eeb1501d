"""The rest of the protocols stock clients call, against a real `shipyard serve`: Triton's model
configuration, statistics and repository index (tritonclient HTTP and gRPC), TF Serving's
Classify, Regress and MultiInference (tensorflow-serving-api's stubs, and REST :classify /
:regress), and errors that never show where the repository lives."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from shipyard import examples
from test_serve import Server, add_version

# One worker runs the module: its module-scoped server (three versions and a broken one) took
# ~4 s to start on each worker xdist gave a share of the module to.
pytestmark = pytest.mark.xdist_group("protocols-server")

X = np.random.default_rng(3).standard_normal((3, 16)).astype("float32")
F = np.random.default_rng(4).standard_normal((5, 4)).astype("float32")


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("protocols") / "repo"
    weights = {v: add_version(repo, "mlp", v) for v in (1, 2, 3)}
    broken = repo / "mlp" / "4"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((repo / "mlp" / "1" / "model.onnx").read_bytes()[:200])
    (repo / "mlp" / "config.json").write_text(json.dumps({
        "version_policy": {"specific": [1, 2, 4]}, "max_concurrency": 2,
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1, "preferred_batch_sizes": [4, 8], "max_queue_size": 64}}))
    census = examples.tf_example_classifier(repo / "census" / "1", seed=5)
    server = Server(repo)
    server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/census/ready").status_code == 200, timeout=60)
    yield server, repo, weights, census
    assert server.stop() == 0


def _http(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.rest.removeprefix("http://"))


def _grpc(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc)


def _infer_http(client, x, version="1", dtype="FP32"):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("x", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer("mlp", [inp], model_version=version)


def _infer_grpc(client, x, version="1"):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp", [inp], model_version=version)


# -- Triton: model configuration ---------------------------------------------------------------


def test_model_config_says_what_the_server_does(repo_server):
    from tritonclient.grpc import model_config_pb2

    server, *_ = repo_server
    extensions = set(_http(server).get_server_metadata()["extensions"])
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= extensions
    assert "model_repository" not in extensions  # the index is served, but loading is the filesystem's
    config = _http(server).get_model_config("mlp")
    assert config == {
        "name": "mlp", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [1, 2, 4]}},
        "max_batch_size": 8,  # the batcher's, and the batch dimension leaves the dims
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
        "instance_group": [{"name": "mlp", "kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 1000,
                             "default_queue_policy": {"max_queue_size": 64}},
    }
    census = _http(server).get_model_config("census", "1")
    assert census["platform"] == "tensorflow_savedmodel" and census["backend"] == "tensorflow"
    assert census["max_batch_size"] == 0 and "dynamic_batching" not in census  # no batching configured: whole shapes
    assert census["input"] == [{"name": "inputs", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert {o["name"]: (o["data_type"], o["dims"]) for o in census["output"]} == {
        "classes": ("TYPE_STRING", [-1, 3]), "scores": ("TYPE_FP32", [-1, 3])}

    reply = _grpc(server).get_model_config("mlp").config  # the same, as tritonclient's own ModelConfig message
    assert reply.name == "mlp" and reply.max_batch_size == 8 and reply.backend == "onnxruntime"
    assert reply.input[0].data_type == model_config_pb2.TYPE_FP32 and list(reply.input[0].dims) == [16]
    assert list(reply.output[0].dims) == [4] and list(reply.version_policy.specific.versions) == [1, 2, 4]
    assert list(reply.dynamic_batching.preferred_batch_size) == [4, 8]
    assert reply.dynamic_batching.max_queue_delay_microseconds == 1000
    assert reply.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert reply.instance_group[0].count == 2


def test_model_config_of_unknown_model_is_not_found(repo_server):
    from tritonclient.utils import InferenceServerException

    server, *_ = repo_server
    with pytest.raises(InferenceServerException) as http_err:
        _http(server).get_model_config("nope")
    assert http_err.value.status() == "404" and "model 'nope' is not in the repository" in http_err.value.message()
    with pytest.raises(InferenceServerException) as grpc_err:
        _grpc(server).get_model_config("nope")
    assert grpc_err.value.status() == "StatusCode.NOT_FOUND"


# -- Triton: statistics ---------------------------------------------------------------------------


def _stats(client, version="1") -> dict:
    (stat,) = client.get_inference_statistics("mlp", version)["model_stats"]
    return stat


def test_statistics_count_exactly_the_requests_made(repo_server):
    from tritonclient.utils import InferenceServerException

    server, _, weights, _ = repo_server
    http, grpc_client = _http(server), _grpc(server)
    before, before_v2 = _stats(http), _stats(http, "2")
    t0 = int(time.time() * 1000)
    for _ in range(5):
        result = _infer_http(http, X)
        np.testing.assert_allclose(result.as_numpy("y"), examples.mlp_reference(weights[1], X), rtol=1e-5, atol=1e-5)
    for _ in range(2):
        _infer_grpc(grpc_client, X[:1])
    with pytest.raises(InferenceServerException, match="expected dtype float32, got int32"):
        _infer_http(http, np.zeros((2, 16), "int32"), dtype="INT32")  # the model refuses it: a failed request
    with pytest.raises(InferenceServerException, match="dimension 1 must be 16"):
        _infer_http(http, np.zeros((2, 5), "float32"))  # refused while decoding, before the model: not counted
    after = _stats(http)

    def grew(path):
        a, b = after, before
        for key in path.split("."):
            a, b = a[key], b[key]
        return a - b

    assert grew("inference_stats.success.count") == 7
    assert grew("inference_stats.fail.count") == 1
    assert grew("inference_stats.queue.count") == 7
    for stage in ("compute_input", "compute_infer", "compute_output"):
        assert grew(f"inference_stats.{stage}.count") == 7
    assert grew("inference_count") == 5 * 3 + 2 * 1  # rows: batching is on, as Triton counts
    assert grew("execution_count") == 7  # one client at a time: nothing to merge
    assert grew("inference_stats.success.ns") > grew("inference_stats.compute_infer.ns") > 0
    assert t0 <= after["last_inference"] <= int(time.time() * 1000)
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    assert sizes.get(3, 0) - old.get(3, 0) == 5 and sizes.get(1, 0) - old.get(1, 0) == 2
    assert _stats(http, "2") == before_v2  # another version: untouched

    (via_grpc,) = grpc_client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"]
    assert int(via_grpc["inference_stats"]["success"]["count"]) == after["inference_stats"]["success"]["count"]
    assert int(via_grpc["inference_count"]) == after["inference_count"]

    everything = http.get_inference_statistics()["model_stats"]  # GET v2/models/stats
    assert {(s["name"], s["version"]) for s in everything} == {("mlp", "1"), ("mlp", "2"), ("census", "1")}
    with pytest.raises(InferenceServerException) as err:
        http.get_inference_statistics("nope")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_inference_statistics("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"


# -- Triton: repository index ------------------------------------------------------------------------


def test_repository_index_lists_every_version_with_its_state(repo_server):
    server, repo, *_ = repo_server
    http, grpc_client = _http(server), _grpc(server)
    index = {(m["name"], m["version"]): (m["state"], m["reason"]) for m in http.get_model_repository_index()}
    assert index[("mlp", "1")] == ("READY", "") and index[("mlp", "2")] == ("READY", "")
    assert index[("census", "1")] == ("READY", "")
    assert index[("mlp", "3")] == ("UNAVAILABLE", "not served: outside the model's version_policy")
    state, reason = index[("mlp", "4")]  # truncated file: failed to load, and says why
    assert state == "UNAVAILABLE" and "mlp/4/model.onnx" in reason and str(repo) not in reason
    via_grpc = grpc_client.get_model_repository_index().models
    assert {(m.name, m.version, m.state, m.reason) for m in via_grpc} == {(n, v, s, r) for (n, v), (s, r) in index.items()}
    ready = requests.post(f"{server.rest}/v2/repository/index", json={"ready": True}).json()
    assert {(m["name"], m["version"]) for m in ready} == {("mlp", "1"), ("mlp", "2"), ("census", "1")}
    bad = requests.post(f"{server.rest}/v2/repository/index", data=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]


def test_unknown_endpoints_answer_json(repo_server):
    server, *_ = repo_server
    for method, path in (("GET", "/v2/nowhere"), ("GET", "/v2/repository/index"), ("POST", "/v1/models/mlp:explain")):
        reply = requests.request(method, f"{server.rest}{path}")
        assert reply.status_code == 404, (path, reply.text)
        assert "no such endpoint" in reply.json()["error"]


# -- TF Serving: Classify, Regress, MultiInference ------------------------------------------------------


def _tf_examples(features: np.ndarray):
    import tensorflow as tf

    return [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist()))})) for row in features]


def _stub(server):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))


def test_tf_serving_classify_regress_multi_inference_grpc(repo_server):
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    server, _, _, weights = repo_server
    stub = _stub(server)
    scores, values = examples.example_classifier_reference(weights, F)

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "census"
    request.input.example_list.examples.extend(_tf_examples(F))
    reply = stub.Classify(request, timeout=30)
    assert reply.model_spec.name == "census" and reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    assert len(reply.result.classifications) == len(F)
    for row, expected in zip(reply.result.classifications, scores):
        assert [c.label for c in row.classes] == ["cat", "dog", "bird"]
        np.testing.assert_allclose([c.score for c in row.classes], expected, rtol=1e-5, atol=1e-6)

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "census"
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(_tf_examples(F))
    reply = stub.Regress(request, timeout=30)
    assert reply.model_spec.signature_name == "regress"
    np.testing.assert_allclose([r.value for r in reply.result.regressions], values, rtol=1e-5, atol=1e-5)

    # context features are merged into each example; the example's own win (TF Serving's rule)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "census"
    request.model_spec.signature_name = "regress"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(_tf_examples(F[:1])[0])
    with_context.examples.extend(_tf_examples(F[1:3]))
    reply = stub.Regress(request, timeout=30)
    np.testing.assert_allclose([r.value for r in reply.result.regressions], values[1:3], rtol=1e-5, atol=1e-5)

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("serving_default", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = multi.tasks.add()
        task.model_spec.name = "census"
        task.model_spec.signature_name = signature
        task.method_name = method
    multi.input.example_list.examples.extend(_tf_examples(F[:2]))
    reply = stub.MultiInference(multi, timeout=30)
    classified, regressed = reply.results
    assert classified.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose([c.score for c in classified.classification_result.classifications[1].classes],
                               scores[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r.value for r in regressed.regression_result.regressions], values[:2], rtol=1e-5, atol=1e-5)


def test_tf_serving_classify_errors_are_clear(repo_server):
    import grpc
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    server, repo, *_ = repo_server
    stub = _stub(server)

    def classify(model, signature="", examples_=None):
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        request.input.example_list.examples.extend(_tf_examples(F[:1]) if examples_ is None else examples_)
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(request, timeout=30)
        return err.value.code(), err.value.details()

    code, details = classify("mlp")  # a model without a classification signature
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "No classification inputs found in SignatureDef" in details and "takes x float32[batch, 16] and gives y" in details
    assert classify("nope")[0] == grpc.StatusCode.NOT_FOUND
    code, details = classify("census", "nope")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "No signature was found with the name: nope" in details
    code, details = classify("census", "regress")  # exists, but gives 'outputs'
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'at least one of "classes" or "scores"' in details
    assert classify("census", examples_=[])[1] == "Input is empty."
    import tensorflow as tf

    missing = tf.train.Example(features=tf.train.Features(feature={
        "y": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
    code, details = classify("census", examples_=[missing])  # the engine refuses: its words, not our paths
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "x" in details
    assert str(repo) not in details and "census/1" in details

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "census"
    request.input.example_list.examples.extend(_tf_examples(F[:1]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Regress(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Expected one output Tensor." in err.value.details()

    multi = inference_pb2.MultiInferenceRequest()
    for _ in range(2):
        task = multi.tasks.add()
        task.model_spec.name = "census"
        task.method_name = "tensorflow/serving/classify"
    multi.input.example_list.examples.extend(_tf_examples(F[:1]))
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(multi, timeout=30)
    assert "Duplicate evaluation of signature: serving_default" in err.value.details()


def test_tf_serving_rest_classify_and_regress(repo_server):
    server, _, _, weights = repo_server
    scores, values = examples.example_classifier_reference(weights, F)
    rows = [{"x": row.tolist()} for row in F]
    reply = requests.post(f"{server.rest}/v1/models/census:classify", json={"examples": rows})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["cat", "dog", "bird"]] * len(F)
    np.testing.assert_allclose([[score for _, score in row] for row in results], scores, rtol=1e-5, atol=1e-6)

    body = {"signature_name": "regress", "context": {"x": F[0].tolist()}, "examples": [{}, {"x": F[1].tolist()}]}
    reply = requests.post(f"{server.rest}/v1/models/census/versions/1:regress", json=body)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["results"], values[:2], rtol=1e-5, atol=1e-5)

    reply = requests.post(f"{server.rest}/v1/models/mlp:classify", json={"examples": rows})
    assert reply.status_code == 400 and "No classification inputs found" in reply.json()["error"]
    reply = requests.post(f"{server.rest}/v1/models/nope:regress", json={"examples": rows})
    assert reply.status_code == 404
    reply = requests.post(f"{server.rest}/v1/models/census:classify", json={"examples": [{"x": [1, "a"]}]})
    assert reply.status_code == 400 and "mixes kinds of values" in reply.json()["error"]


def test_classify_requests_count_in_statistics(repo_server):
    server, *_ = repo_server
    http = _http(server)
    (before,) = http.get_inference_statistics("census")["model_stats"]
    for _ in range(3):
        assert requests.post(f"{server.rest}/v1/models/census:classify",
                             json={"examples": [{"x": row.tolist()} for row in F[:2]]}).status_code == 200
    (after,) = http.get_inference_statistics("census")["model_stats"]
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert after["inference_count"] - before["inference_count"] == 3  # no batch dimension configured: 1 per request


# -- one decoded request for every KServe wire ----------------------------------------------------------


def test_one_infer_request_from_rest_json_binary_and_grpc():
    """The same request sent four ways decodes to the same tensors and options, and one
    response encodes to what each wire expects."""
    import orjson
    import tritonclient.grpc as grpcclient

    from shipyard.model import Signature, TensorSpec
    from shipyard.serve import codec, inference
    from shipyard.serve.protos import kserve_pb2

    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    ids = np.array([[7], [-1]], dtype=np.int64)
    sig = Signature((TensorSpec("x", "float32", (-1, 3)), TensorSpec("ids", "int64", (-1, 1))), ())
    limits = lambda: codec.Limits(sig, 1 << 20)  # one per request, as the front ends make them
    outputs = [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]
    as_json = inference.from_rest({"id": "r1", "inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.tolist()},
        {"name": "ids", "shape": [2, 1], "datatype": "INT64", "data": ids.ravel().tolist()}], "outputs": outputs},
        memoryview(b""), limits())
    blob = x.tobytes() + ids.tobytes()
    as_binary = inference.from_rest({"id": "r1", "inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        {"name": "ids", "shape": [2, 1], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}}],
        "outputs": outputs}, memoryview(blob), limits())
    typed = kserve_pb2.ModelInferRequest(id="r1", outputs=[{"name": "y"}, {"name": "z"}])
    typed.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(x.ravel().tolist())
    typed.inputs.add(name="ids", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend(ids.ravel().tolist())
    raw = kserve_pb2.ModelInferRequest(id="r1", outputs=[{"name": "y"}, {"name": "z"}])
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    raw.inputs.add(name="ids", datatype="INT64", shape=[2, 1])
    raw.raw_input_contents.extend([x.tobytes(), ids.tobytes()])
    decoded = [as_json, as_binary, inference.from_grpc(typed, limits()), inference.from_grpc(raw, limits())]
    for request in decoded:
        assert request.id == "r1" and request.outputs == ["y", "z"]
        np.testing.assert_array_equal(request.inputs["x"], x)
        np.testing.assert_array_equal(request.inputs["ids"], ids)
        assert request.inputs["ids"].dtype == np.int64
    assert as_json.binary == {"y": True, "z": False}

    y, z = x * 2, np.array([b"a", b"bc"], dtype=object)
    response = inference.InferResponse("m", "3", inference.outputs_for(as_json, {"z": z, "y": y, "w": x}), "r1")
    assert list(response.outputs) == ["y", "z"]  # what was asked for, in that order
    head, blobs = inference.to_rest(response, as_json, orjson.dumps)
    assert orjson.loads(head) == {"model_name": "m", "model_version": "3", "id": "r1", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": y.nbytes}},
        {"name": "z", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}]}
    assert blobs == [y.tobytes()]
    reply = kserve_pb2.ModelInferResponse()
    inference.to_grpc(response, reply)
    result = grpcclient.InferResult(grpcclient.service_pb2.ModelInferResponse.FromString(reply.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("y"), y)  # tritonclient reads it back
    assert list(result.as_numpy("z")) == [b"a", b"bc"]
    with pytest.raises(Exception, match="unknown output name"):
        inference.outputs_for(inference.InferRequest({}, ["nope"]), {"y": y})
    with pytest.raises(Exception, match="dimension 1 must be 3"):
        inference.from_rest({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]},
                            memoryview(b""), limits())


def test_tf_serving_metadata_lists_every_signature(repo_server):
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    server, *_ = repo_server
    meta = requests.get(f"{server.rest}/v1/models/census/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert set(meta) == {"serving_default", "regress"}
    assert meta["regress"]["outputs"]["outputs"]["dtype"] == "DT_FLOAT"
    assert meta["serving_default"]["outputs"]["classes"]["dtype"] == "DT_STRING"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "census"
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(sigmap)
    assert set(sigmap.signature_def) == {"serving_default", "regress"}
    assert list(sigmap.signature_def["regress"].inputs) == ["inputs"]
