"""`shipyard serve` under hostile and careless clients (security review, issue 14).

Every test talks to a real server process with real clients (grpcio, requests, raw sockets)
on 127.0.0.1: request amplification, non-ASCII version digits, malformed messages, auth
rules, the ready file, and a small fuzz of malformed REST bodies and gRPC messages.
"""
from __future__ import annotations

import collections
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from shipyard import examples
from test_serve import Server, add_version

TOKEN = "tok-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = [("authorization", f"Bearer {TOKEN}")]
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """mlp versions 1 and 2, a token, and a 1 MB request limit."""
    root = tmp_path_factory.mktemp("hardened")
    repo = root / "repo"
    weights = {v: add_version(repo, "mlp", v) for v in (1, 2)}
    (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": "all"}))
    token = root / "token"
    token.write_text(TOKEN)
    server = Server(repo, "--auth-token-file", str(token), "--max-request-mb", "1")
    server.wait_for(lambda: requests.get(f"{server.rest}/v2/health/ready").status_code == 200)
    yield server, weights
    assert server.stop() == 0


def _rss_mb(server: Server) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of the serving process (the CLI's crash guard forks it), from /proc."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    pid = int(children[0]) if children else pid
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _raw(channel, method: str):
    """A unary call that sends and receives bytes as they are (a client with its own encoder)."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _predict_bytes(dtype: int, dims: list[int], field: str, values: list, name: str = "x", model: str = "mlp") -> bytes:
    from shipyard.serve.protos import tfserving_pb2 as tpb

    req = tpb.PredictRequest()
    req.model_spec.name = model
    tp = req.inputs[name]
    tp.dtype = dtype
    for d in dims:
        tp.tensor_shape.dim.add().size = d
    if field == "tensor_content":
        tp.tensor_content = bytes(values)
    else:
        getattr(tp, field).extend(values)
    return req.SerializeToString()


def _grpc_code(call, payload: bytes, metadata=GRPC_AUTH):
    import grpc

    try:
        call(payload, timeout=30, metadata=metadata)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


# -- 1. request amplification ----------------------------------------------------------------


def test_grpc_amplification_request_is_refused_before_allocating(hardened):
    import grpc

    server, _ = hardened
    DT_FLOAT, DT_DOUBLE = 1, 2
    channel = grpc.insecure_channel(server.grpc)
    predict = _raw(channel, PREDICT)
    attack = _predict_bytes(DT_DOUBLE, [268435456], "double_val", [1.0])
    assert len(attack) < 40  # 36 bytes that would expand to 2 GB
    rss_before, _ = _rss_mb(server)
    start = time.perf_counter()
    code, details = _grpc_code(predict, attack)
    elapsed = time.perf_counter() - start
    rss_after, peak = _rss_mb(server)
    print(f"\namplification: {code} in {elapsed * 1e3:.0f} ms; VmRSS {rss_before:.0f} -> {rss_after:.0f} MB, "
          f"VmHWM {peak:.0f} MB")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "rank" in details, details
    assert elapsed < 2.0 and rss_after - rss_before < 100 and peak - rss_before < 100

    # A shape the signature accepts but the size limit (1 MB) does not: 4 MB from one value.
    rss_before, _ = _rss_mb(server)
    for payload in (_predict_bytes(DT_FLOAT, [65536, 16], "float_val", [1.0]),
                    _predict_bytes(DT_FLOAT, [1 << 24, 16], "float_val", [1.0])):
        code, details = _grpc_code(predict, payload)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details, (code, details)
    code, details = _grpc_code(predict, _predict_bytes(DT_DOUBLE, [1 << 40, 16], "double_val", []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details, (code, details)
    # KServe gRPC: typed contents and raw_input_contents that declare far more than they hold.
    from shipyard.serve.protos import kserve_pb2 as kpb

    infer = _raw(channel, MODEL_INFER)
    typed = kpb.ModelInferRequest(model_name="mlp")
    t = typed.inputs.add(name="x", datatype="FP32", shape=[1 << 24, 16])
    t.contents.fp32_contents.append(1.0)
    raw = kpb.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * 64])
    raw.inputs.add(name="x", datatype="FP32", shape=[1 << 24, 16])
    rank = kpb.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * 8])
    rank.inputs.add(name="x", datatype="FP64", shape=[268435456])
    for message, want in ((typed, grpc.StatusCode.RESOURCE_EXHAUSTED), (raw, grpc.StatusCode.RESOURCE_EXHAUSTED),
                          (rank, grpc.StatusCode.INVALID_ARGUMENT)):
        code, details = _grpc_code(infer, message.SerializeToString())
        assert code == want, (code, details)
    # REST: KServe JSON, the binary extension, TF Serving JSON (rows and b64)
    infer_url = f"{server.rest}/v2/models/mlp/infer"
    big = {"inputs": [{"name": "x", "shape": [1 << 24, 16], "datatype": "FP32", "data": [1.0]}]}
    reply = requests.post(infer_url, json=big, headers=AUTH)
    assert reply.status_code == 413 and "limit" in reply.json()["error"], reply.text
    big["inputs"][0]["shape"] = [268435456]
    assert requests.post(infer_url, json=big, headers=AUTH).status_code == 400
    header = json.dumps({"inputs": [{"name": "x", "shape": [1 << 24, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    reply = requests.post(infer_url, data=header + b"\0" * 64,
                          headers={**AUTH, "Inference-Header-Content-Length": str(len(header))})
    assert reply.status_code == 413, reply.text
    reply = requests.post(f"{server.rest}/v1/models/mlp:predict", json={"instances": [[{"b64": "AAAA"}] * 16]},
                          headers=AUTH)
    assert reply.status_code == 400, reply.text
    rss_after, peak2 = _rss_mb(server)
    assert rss_after - rss_before < 100 and peak2 - peak < 100, (rss_before, rss_after, peak, peak2)
    # ... and honest requests of every kind still work.
    x = np.ones((2, 16), np.float32)
    ok = _predict_bytes(DT_FLOAT, [2, 16], "float_val", [1.0])  # TF fills with the last value
    assert _grpc_code(predict, ok)[0] == grpc.StatusCode.OK
    assert requests.post(f"{server.rest}/v1/models/mlp:predict", json={"instances": x.tolist()},
                         headers=AUTH).status_code == 200


# -- 2. non-ASCII digits in versions -----------------------------------------------------------


@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A1", "%EF%BC%91", "%E2%91%A0"])  # ² ١ １ ①
def test_non_ascii_version_digits_are_client_errors(hardened, version):
    server, _ = hardened
    for method, path in [("GET", f"/v1/models/mlp/versions/{version}"),
                         ("GET", f"/v1/models/mlp/versions/{version}/metadata"),
                         ("POST", f"/v1/models/mlp/versions/{version}:predict"),
                         ("GET", f"/v2/models/mlp/versions/{version}"),
                         ("GET", f"/v2/models/mlp/versions/{version}/ready"),
                         ("POST", f"/v2/models/mlp/versions/{version}/infer"),
                         ("POST", f"/v2/models/mlp/versions/{version}/infer?x=1")]:
        body = {"instances": [[0.0] * 16]} if "predict" in path else \
            {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}
        reply = requests.request(method, server.rest + path, json=body if method == "POST" else None, headers=AUTH)
        assert reply.status_code == 400 and "version" in reply.json()["error"], (path, reply.status_code, reply.text)


def test_non_ascii_version_digits_over_grpc(hardened):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, _ = hardened
    client = grpcclient.InferenceServerClient(server.grpc)
    headers = dict(GRPC_AUTH)
    x = grpcclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.zeros((1, 16), np.float32))
    for version in ("²", "١", "１"):
        for call in (lambda v: client.is_model_ready("mlp", v, headers=headers),
                     lambda v: client.get_model_metadata("mlp", v, headers=headers),
                     lambda v: client.infer("mlp", [x], model_version=v, headers=headers)):
            with pytest.raises(InferenceServerException) as info:
                call(version)
            assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), info.value


def test_version_folder_with_non_ascii_digits_is_ignored(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "mlp", 1)
    odd = add_version(repo, "odd", 1)
    (repo / "odd" / "1").rename(repo / "odd" / "²")
    add_version(repo, "odd", 3)
    (repo / "mlp" / "١").mkdir()
    server = Server(repo)  # starts: no "cannot join thread before it is started"
    try:
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/mlp").status_code == 200)
        assert requests.get(f"{server.rest}/v2/models/odd").json()["versions"] == ["3"]
        weights = add_version(repo, "mlp", 2)  # hot reload still works for every model
        server.wait_for(lambda: requests.get(f"{server.rest}/v2/models/mlp").json().get("versions") == ["2"])
        x = np.ones((1, 16), np.float32)
        reply = requests.post(f"{server.rest}/v1/models/mlp:predict", json={"instances": x.tolist()})
        np.testing.assert_allclose(reply.json()["predictions"], examples.mlp_reference(weights, x), rtol=1e-4, atol=1e-4)
        time.sleep(1.2)  # a few more polls (0.5 s): still one line per ignored folder
        out = server.output()
        assert "Traceback" not in out and "sync failed" not in out, out[-3000:]
        assert sum("²" in line for line in out.splitlines()) == 1, out[-3000:]
        assert sum("١" in line for line in out.splitlines()) == 1, out[-3000:]
        del odd
    finally:
        assert server.stop() == 0


# -- 3. malformed messages, disconnects -------------------------------------------------------


def test_grpc_malformed_messages_are_invalid_argument(hardened):
    import grpc

    server, _ = hardened
    channel = grpc.insecure_channel(server.grpc)
    predict = _raw(channel, PREDICT)
    too_many = _predict_bytes(1, [1, 16], "float_val", [1.0] * 17)
    code, details = _grpc_code(predict, too_many)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "17" in details, (code, details)
    for garbage in (b"\xff\xff\xff", b"\x0a\xff", b"\x0a\x05ab"):
        for method in (PREDICT, MODEL_INFER, "/inference.GRPCInferenceService/ModelMetadata"):
            code, details = _grpc_code(_raw(channel, method), garbage)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "decode" in details, (method, garbage, code, details)
    assert "Traceback" not in server.output()


def test_rest_client_disconnect_mid_body_is_a_client_error(hardened):
    server, _ = hardened
    host, port = server.rest.removeprefix("http://").split(":")
    path = "/v2/models/mlp/infer?disconnect-test"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"inputs\": [".encode())
        time.sleep(0.3)
    deadline = time.time() + 10
    while '"status": 499' not in server.output() and time.time() < deadline:
        time.sleep(0.05)
    out = server.output()
    assert "Traceback" not in out and "internal error" not in out, out[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"ts"') and '"path": "/v2/models/mlp/infer"' in line
             and '"status": 499' in line]
    assert len(lines) == 1, out[-3000:]
    assert requests.get(f"{server.rest}/v2/health/live").status_code == 200


# -- 4. one auth rule on both protocols, --metrics-open ------------------------------------------


def test_auth_rule_is_the_same_on_rest_and_grpc(hardened):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, _ = hardened
    for path in ("/openapi.json", "/metrics", "/v2", "/v2/models/mlp", "/v1/models/mlp"):
        assert requests.get(server.rest + path).status_code == 401, path
        assert requests.get(server.rest + path, headers=AUTH).status_code == 200, path
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert requests.get(server.rest + path).status_code == 200, path
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()  # health: open, as on REST
    with pytest.raises(InferenceServerException, match="token"):
        client.get_server_metadata()
    with pytest.raises(InferenceServerException, match="token"):
        client.is_model_ready("mlp")
    assert client.get_server_metadata(headers=dict(GRPC_AUTH)).name == "shipyard"


def test_metrics_open_lets_prometheus_scrape_without_the_token(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "mlp", 1)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    server = Server(repo, "--auth-token-file", str(token), "--metrics-open")
    try:
        reply = requests.get(f"{server.rest}/metrics")
        assert reply.status_code == 200 and "shipyard_requests_total" in reply.text
        for path in ("/openapi.json", "/v2", "/v2/models/mlp"):
            assert requests.get(server.rest + path).status_code == 401, path
    finally:
        assert server.stop() == 0


# -- 5. the ready file means ready ----------------------------------------------------------------


def _slow_onnx(path: Path, nodes: int = 3000) -> None:
    """y = x through a chain of Add/Mul nodes: onnxruntime takes ~0.4 s to load it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph, inits, prev = [], [], "x"
    for i in range(nodes):
        inits.append(numpy_helper.from_array(np.full(16, 1.0 if i % 2 else 0.0, np.float32), f"c{i}"))
        out = "y" if i == nodes - 1 else f"t{i}"
        graph.append(helper.make_node("Mul" if i % 2 else "Add", [prev, f"c{i}"], [out]))
        prev = out
    model = helper.make_model(helper.make_graph(
        graph, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_request_right_after_the_ready_file_succeeds(tmp_path):
    repo = tmp_path / "repo"
    names = [f"m{i}" for i in range(4)]
    for name in names:
        _slow_onnx(repo / name / "1" / "model.onnx")
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")  # fails to load: must not hold the ready file back
    server = Server(repo, "--no-access-log")  # returns as soon as the ready file exists
    try:
        x = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        codes = {name: requests.post(f"{server.rest}/v2/models/{name}/infer", json=x).status_code for name in names}
        assert set(codes.values()) == {200}, codes
        assert requests.get(f"{server.rest}/v2/models/broken/ready").status_code == 400
    finally:
        assert server.stop() == 0


# -- fuzz: malformed REST bodies and gRPC messages ------------------------------------------------


def _valid_grpc_messages() -> list[tuple[str, bytes]]:
    from shipyard.serve.protos import kserve_pb2 as kpb
    from shipyard.serve.protos import tfserving_pb2 as tpb

    infer = kpb.ModelInferRequest(model_name="mlp", model_version="1", raw_input_contents=[b"\0" * 64])
    infer.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    typed = kpb.ModelInferRequest(model_name="mlp")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([0.5] * 16)
    status = tpb.GetModelStatusRequest()
    status.model_spec.name = "mlp"
    meta = tpb.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "mlp"
    return [(PREDICT, _predict_bytes(1, [1, 16], "float_val", [0.5] * 16)),
            (PREDICT, _predict_bytes(1, [1, 16], "tensor_content", [0] * 64)),
            (MODEL_INFER, infer.SerializeToString()), (MODEL_INFER, typed.SerializeToString()),
            ("/inference.GRPCInferenceService/ModelMetadata", kpb.ModelMetadataRequest(name="mlp", version="2").SerializeToString()),
            ("/inference.GRPCInferenceService/ModelReady", kpb.ModelReadyRequest(name="mlp").SerializeToString()),
            ("/tensorflow.serving.ModelService/GetModelStatus", status.SerializeToString()),
            ("/tensorflow.serving.PredictionService/GetModelMetadata", meta.SerializeToString())]


def test_fuzz_malformed_rest_and_grpc_requests(hardened):
    import grpc
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    server, _ = hardened
    channel = grpc.insecure_channel(server.grpc)
    valid = _valid_grpc_messages()
    seen: collections.Counter = collections.Counter()
    bad: list = []  # collected, not asserted per case: every case runs, and the figures below are complete
    allowed_grpc = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.RESOURCE_EXHAUSTED}

    def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
        out = bytearray(data)
        for kind, pos, value in edits:
            pos = pos % (len(out) + 1)
            if kind == 0 and pos < len(out):
                out[pos] = value
            elif kind == 1:
                out.insert(pos, value)
            elif kind == 2 and pos < len(out):
                del out[pos]
            else:
                del out[pos:]
        return bytes(out)

    edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(which=st.integers(0, len(valid) - 1), edits=edits, random_bytes=st.binary(max_size=48), use_random=st.booleans())
    def grpc_case(which, edits, random_bytes, use_random):
        method, message = valid[which]
        payload = random_bytes if use_random else mutate(message, edits)
        code, details = _grpc_code(_raw(channel, method), payload)
        seen[f"grpc {code.name}"] += 1
        if code not in allowed_grpc:
            bad.append((method, payload, code, details))

    tensor = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
    rest_valid = [("/v2/models/mlp/infer", json.dumps({"inputs": [tensor]}).encode(), None),
                  ("/v1/models/mlp:predict", json.dumps({"instances": [[0.5] * 16]}).encode(), None),
                  ("/v1/models/mlp/versions/1:predict", json.dumps({"inputs": {"x": [[0.5] * 16]}}).encode(), None)]
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64}}], "outputs": [{"name": "y"}]}).encode()
    rest_valid.append(("/v2/models/mlp/versions/2/infer", header + b"\0" * 64, str(len(header))))
    session = requests.Session()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(which=st.integers(0, len(rest_valid) - 1), edits=edits,
           version=st.sampled_from(["", "1", "²", "١", "-1", "99999999999999999999", "%00", "1%2F.."]),
           header_len=st.sampled_from([None, "0", "-1", "²", "999999", "12"]))
    def rest_case(which, edits, version, header_len):
        path, body, length = rest_valid[which]
        if version and "/versions/" not in path:
            path = path.replace("/mlp", f"/mlp/versions/{version}", 1)
        headers = dict(AUTH)
        if length is not None or header_len is not None:
            headers["Inference-Header-Content-Length"] = header_len or length
        reply = session.post(server.rest + path, data=mutate(body, edits), headers=headers)
        seen[f"http {reply.status_code}"] += 1
        if not (400 <= reply.status_code < 500 or reply.status_code == 200):
            bad.append((path, reply.status_code, reply.text))

    start = time.perf_counter()
    try:
        grpc_case()
        rest_case()
    finally:
        print(f"\nfuzz: {sum(seen.values())} malformed requests in {time.perf_counter() - start:.1f} s: "
              f"{dict(sorted(seen.items()))}")
    assert not bad, bad[:5]
    assert requests.get(f"{server.rest}/v2/health/live").status_code == 200
    assert server.proc.poll() is None and "Traceback" not in server.output()
