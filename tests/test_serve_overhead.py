"""What was taken off the request path (issue 16): each shortcut keeps the behaviour it skips."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from shipyard.serve.batcher import INLINE_BELOW_S, Batcher
from shipyard.serve.repository import BatchingConfig, scan
from shipyard.serve.watcher import RepositoryWatcher

# -- watcher: its own reads do not wake it -----------------------------------------------------


def test_watcher_is_not_woken_by_its_own_scans(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"x")
    (tmp_path / "m" / "config.json").write_text("{}")
    syncs = []
    watcher = RepositoryWatcher(tmp_path, lambda: (syncs.append(time.monotonic()), scan(tmp_path)), poll_seconds=60)
    watcher.start()
    try:
        assert watcher.mode == "events"  # inotify through watchdog (serve extra)
        (tmp_path / "m" / "config.json").write_text('{"threads": 1}')  # a real change: one sync
        time.sleep(1.5)
        # Before the fix every scan (it opens config.json, lists directories) woke the watcher
        # again: a sync every ~80 ms, forever.
        assert 1 <= len(syncs) <= 2, len(syncs)
        before = len(syncs)
        (tmp_path / "m" / "2").mkdir()
        time.sleep(0.5)
        assert len(syncs) > before  # a new version directory still wakes it at once
    finally:
        watcher.stop()


# -- batcher: a batch of one runs on the caller's thread -------------------------------------


def _recording_batcher(config: BatchingConfig, delay: float = 0.0):
    threads = []

    def run(feeds):
        threads.append(threading.current_thread().name)
        if delay:
            time.sleep(delay)
        return {"y": feeds["x"] * 2}

    return Batcher(run, config, name="t"), threads


def test_a_tiny_models_lone_request_runs_inline_with_the_same_answer():
    batcher, threads = _recording_batcher(BatchingConfig(max_batch_size=8))
    try:
        first = batcher.submit({"x": np.ones((1, 4), "float32")})
        np.testing.assert_array_equal(first.result(5)["y"], 2 * np.ones((1, 4)))
        assert threads == ["batcher-t-0"]  # unmeasured: the worker runs it (and times it)
        second = batcher.submit({"x": np.full((1, 4), 3, "float32")})
        assert second.done()  # answered before submit returned
        np.testing.assert_array_equal(second.result()["y"], np.full((1, 4), 6))
        assert threads[1] == threading.current_thread().name
    finally:
        batcher.close()


def test_a_request_with_company_in_flight_is_queued_for_merging():
    from shipyard.serve.batcher import ALONE

    batcher, threads = _recording_batcher(BatchingConfig(max_batch_size=8))
    try:
        batcher.submit({"x": np.ones((1, 4), "float32")}).result(5)
        token = ALONE.set(False)  # what the REST front end says while other requests are in flight
        try:
            assert batcher.submit({"x": np.ones((1, 4), "float32")}).result(5)["y"].shape == (1, 4)
        finally:
            ALONE.reset(token)
        assert threads == ["batcher-t-0", "batcher-t-0"]
        batcher.submit({"x": np.ones((1, 4), "float32")}).result(5)
        assert threads[-1] == threading.current_thread().name  # alone again: at once
    finally:
        batcher.close()


def test_without_batching_company_in_flight_does_not_queue_a_tiny_request():
    """Requests that cannot share an engine call (no dynamic batching, the default) gain nothing
    from the queue: with others in flight a tiny model's request still runs at once."""
    from shipyard.serve.batcher import ALONE

    batcher, threads = _recording_batcher(BatchingConfig())  # max_batch_size 1
    try:
        batcher.submit({"x": np.ones((1, 4), "float32")}).result(5)  # measured on the worker
        token = ALONE.set(False)
        try:
            assert batcher.submit({"x": np.ones((1, 4), "float32")}).done()
        finally:
            ALONE.reset(token)
        assert threads == ["batcher-t-0", threading.current_thread().name]
    finally:
        batcher.close()


def test_inline_errors_reach_the_caller_like_queued_ones():
    calls = []

    def run(feeds):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("engine says no")
        return {"y": feeds["x"]}

    batcher = Batcher(run, BatchingConfig())
    try:
        batcher.submit({"x": np.ones((1, 2))}).result(5)
        future = batcher.submit({"x": np.ones((1, 2))})
        assert future.done()
        with pytest.raises(ValueError, match="engine says no"):
            future.result()
    finally:
        batcher.close()


@pytest.mark.parametrize("config, delay", [
    (BatchingConfig(max_batch_size=8, max_queue_delay_ms=5), 0.0),  # a queue delay asks to wait for company
    (BatchingConfig(max_batch_size=8), INLINE_BELOW_S * 8),        # a slow model stays off the caller's thread
])
def test_requests_go_through_the_queue_when_batching_or_cost_asks_for_it(config, delay):
    batcher, threads = _recording_batcher(config, delay)
    try:
        for _ in range(4):
            batcher.submit({"x": np.ones((1, 4), "float32")}).result(5)
        assert set(threads) == {"batcher-t-0"}
    finally:
        batcher.close()


def test_close_waits_for_an_inline_call_in_flight():
    gate, started = threading.Event(), threading.Event()
    calls = []

    def run(feeds):
        calls.append(1)
        if len(calls) == 2:
            started.set()
            gate.wait(5)
        return {"y": feeds["x"]}

    batcher = Batcher(run, BatchingConfig())
    batcher.submit({"x": np.ones((1, 1))}).result(5)
    caller = threading.Thread(target=batcher.submit, args=({"x": np.ones((1, 1))},))
    caller.start()
    assert started.wait(5)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # the engine is still in use: the runner must not be released yet
    gate.set()
    closer.join(5)
    caller.join(5)
    assert not closer.is_alive()


# -- uvicorn protocol: head and body in one write, same bytes --------------------------------


@pytest.fixture
def http_server():
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from shipyard.serve.http import protocol_class

    async def echo(request: Request) -> Response:
        return Response(b"echo:" + await request.body(), media_type="text/plain")

    async def stream(request: Request) -> StreamingResponse:
        async def parts():
            for p in (b"a", b"bb", b"ccc"):
                yield p
        return StreamingResponse(parts(), media_type="text/plain")

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"]), Route("/stream", stream),
                            Route("/empty", empty)])
    protocol = protocol_class()
    assert protocol is not None  # httptools comes with the serve extra
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, fd=sock.fileno(), log_level="critical", lifespan="off", http=protocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()


def _exchange(port: int, data: bytes, until: bytes, expect_continue: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        if expect_continue:
            head, _, body = data.partition(b"\r\n\r\n")
            conn.sendall(head + b"\r\n\r\n")
            got = conn.recv(100)
            assert got.startswith(b"HTTP/1.1 100 Continue"), got  # not held back behind the answer's head
            conn.sendall(body)
        else:
            conn.sendall(data)
        out = b""
        while out.count(until) < 1:
            chunk = conn.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_answers_are_whole_for_every_kind_of_response(http_server):
    port = http_server
    # pipelined: GET, HEAD (no body is written), 204, a streamed answer, then a POST
    reqs = (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    out = _exchange(port, reqs, b"echo:abc")
    answers = out.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"204", b"200", b"200"], out
    assert answers[0].endswith(b"\r\n\r\necho:")
    assert b"content-length: 5" in answers[1] and answers[1].endswith(b"\r\n\r\n")  # HEAD: head only
    assert b"transfer-encoding: chunked" in answers[3] and b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n0\r\n\r\n" in answers[3]
    assert answers[4].endswith(b"echo:abc")
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhi"
    assert _exchange(port, post, b"echo:hi", expect_continue=True).endswith(b"echo:hi")


def test_head_and_body_leave_in_one_send(http_server, monkeypatch):
    """The point of serve/http.py: one write of the whole answer per request."""
    from shipyard.serve import http

    writes = []
    original = http._HeldTransport.__init__

    def spy(self, real):
        original(self, real)

        class Real:
            def __getattr__(_, name):
                return getattr(real, name)

            def write(_, data):
                writes.append(bytes(data))
                real.write(data)
        self.real = Real()

    monkeypatch.setattr(http._HeldTransport, "__init__", spy)
    out = _exchange(http_server, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"echo:")
    assert out.endswith(b"echo:")
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"echo:"), writes


# -- access log: the same line, built faster --------------------------------------------------


@pytest.mark.parametrize("path, model", [("/v2/models/m/infer", "m"), ('/v1/models/a"b\\c:predict', "a\"b\\c"),
                                         ("/v2/models/é\u2028\x01/infer", "é\u2028\x01"), ("", "")])
@pytest.mark.parametrize("status", [200, 404, "OK"])
def test_access_line_is_what_json_dumps_writes(path, model, status):
    import json

    from shipyard.serve.rest import access_line

    ts, ms = round(time.time(), 3), round(0.1234567, 3)
    expected = json.dumps({"ts": ts, "protocol": "kserve", "method": "POST", "path": path, "model": model,
                           "status": status, "ms": ms})
    assert access_line(ts, "kserve", "POST", path, model, status, ms) == expected


# -- KServe infer as a bare ASGI handler: the same answers as through Starlette ----------------


@pytest.fixture(scope="module")
def kserve_api(tmp_path_factory):
    import json

    from shipyard import examples
    from shipyard.serve.manager import Manager
    from shipyard.serve.metrics import Metrics
    from shipyard.serve.rest import RestAPI

    repo = tmp_path_factory.mktemp("repo")
    examples.onnx_mlp(repo / "m" / "1" / "model.onnx", seed=0)
    (repo / "m" / "config.json").write_text(json.dumps({"batching": {"max_batch_size": 8}}))
    metrics = Metrics()
    manager = Manager(repo, metrics)
    manager.sync()
    deadline = time.time() + 60
    while not manager.settled() and time.time() < deadline:
        time.sleep(0.02)
    yield RestAPI(manager, metrics, auth_token="s3cret", max_request_bytes=4096), metrics
    manager.shutdown()


def _call(app, path: str, body: bytes, headers: dict[str, str], chunks: int = 1):
    import asyncio

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": raw,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    step = max(1, -(-len(body) // chunks))
    parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    return sent[0]["status"], sent[0]["headers"], sent[1]["body"]


def _infer_cases():
    import json

    x = [round(0.1 * i, 3) for i in range(16)]
    ok = json.dumps({"id": "r1", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x}]}).encode()
    head = json.dumps({"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 128}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    binary = head + np.arange(32, dtype="<f4").tobytes()
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
    return [
        ("/v2/models/m/infer", ok, auth, 1),
        ("/v2/models/m/versions/1/infer", ok, auth, 3),  # a body in three messages
        ("/v2/models/m/infer", binary, {**auth, "Inference-Header-Content-Length": str(len(head))}, 1),
        ("/v2/models/m/infer", ok, {"Authorization": "Bearer wrong"}, 1),                    # 401
        ("/v2/models/m/infer", ok, {}, 1),                                                  # 401, no header
        ("/v2/models/m/infer", b"{not json", auth, 1),                                      # 400
        ("/v2/models/m/infer", ok.replace(b'"x"', b'"nope"'), auth, 1),                    # 400 unknown input
        ("/v2/models/m/infer", ok, {**auth, "Inference-Header-Content-Length": "x1"}, 1),  # 400
        ("/v2/models/zz/infer", ok, auth, 1),                                               # 404
        ("/v2/models/m/versions/7/infer", ok, auth, 1),                                     # 404 version
        ("/v2/models/m/versions/x/infer", ok, auth, 1),                                     # 400 version
        ("/v2/models/m/infer", b"[" * 5000, {**auth, "Content-Length": "5000"}, 1),       # 413 declared
        ("/v2/models/m/infer", b" " * 5000, auth, 4),                                       # 413 while arriving
    ]


@pytest.mark.parametrize("case", range(len(_infer_cases())))
def test_kserve_infer_answers_byte_for_byte_as_through_starlette(kserve_api, case, monkeypatch):
    """The fast path (RestAPI.app) and the Starlette route to ``kserve`` (what --root-path and Ray
    Serve use) answer every case with the same status, headers and body, and count the same."""
    from shipyard.serve import rest

    api, metrics = kserve_api
    path, body, headers, chunks = _infer_cases()[case]
    starlette_answer = _call(api._starlette, path, body, headers, chunks)
    before = metrics.render()

    class NoRequest:  # the fast path builds no Starlette Request (what it saves)
        def __init__(self, *args, **kwargs):
            raise AssertionError("a Starlette Request was built on the inference path")

    monkeypatch.setattr(rest, "Request", NoRequest)
    fast_answer = _call(api.app, path, body, headers, chunks)
    assert fast_answer == starlette_answer
    assert fast_answer[0] in (200, 400, 401, 404, 413)
    if fast_answer[0] == 200:
        assert b'"model_name":"m"' in fast_answer[2]
    after = metrics.render()
    assert after != before  # counted like the Starlette path (request counter and latency)


def test_kserve_infer_fast_path_logs_the_same_access_line(kserve_api, caplog):
    import json

    api, _ = kserve_api
    path, body, headers, _chunks = _infer_cases()[0]
    with caplog.at_level("INFO", logger="shipyard.serve.access"):
        _call(api.app, path, body, headers)
        _call(api._starlette, path, body, headers)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "shipyard.serve.access"]
    assert len(lines) == 2
    for line in lines:
        line.pop("ts"), line.pop("ms")
    assert lines[0] == lines[1] == {"protocol": "kserve", "method": "POST", "path": path, "model": "m", "status": 200}


def test_access_line_is_written_as_logging_would_without_a_record(monkeypatch):
    """With the handlers `shipyard serve` configures (a StreamHandler writing the bare message),
    the line reaches the stream byte for byte as through logging, without a LogRecord."""
    import io
    import logging

    from shipyard.serve import rest

    fast, slow = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(fast)
    handler.setFormatter(logging.Formatter("%(message)s"))
    monkeypatch.setattr(logging.root, "handlers", [handler])  # pytest's capture handlers set aside
    monkeypatch.setattr(rest.access_log, "level", logging.INFO)
    line = rest.access_line(1.5, "kserve", "POST", "/v2/models/é/infer", "é", 200, 0.25)

    def no_record(*args, **kwargs):
        raise AssertionError("a LogRecord was built")

    monkeypatch.setattr(rest.access_log, "makeRecord", no_record)
    rest.write_access_line(line)
    rest.write_access_line(line)
    monkeypatch.undo()
    reference = logging.StreamHandler(slow)
    reference.setFormatter(logging.Formatter("%(message)s"))
    record = rest.access_log.makeRecord(rest.access_log.name, logging.INFO, __file__, 0, line, None, None)
    reference.handle(record)
    reference.handle(record)
    assert fast.getvalue() == slow.getvalue() == f"{line}\n{line}\n"


@pytest.mark.parametrize("setup", ["formatter", "filter", "file"])
def test_access_line_goes_through_logging_for_any_other_set_up(setup, tmp_path, monkeypatch):
    import io
    import logging

    from shipyard.serve import rest

    stream = io.StringIO()
    handler = logging.FileHandler(tmp_path / "a.log") if setup == "file" else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if setup == "formatter" else "%(message)s"))
    if setup == "filter":
        handler.addFilter(lambda record: "secret" not in record.getMessage())
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(rest.access_log, "level", logging.INFO)
    rest.write_access_line('{"path": "/secret"}')
    rest.write_access_line('{"path": "/v2"}')
    handler.close()
    out = (tmp_path / "a.log").read_text() if setup == "file" else stream.getvalue()
    assert out == {"formatter": 'INFO {"path": "/secret"}\nINFO {"path": "/v2"}\n',
                   "filter": '{"path": "/v2"}\n',
                   "file": '{"path": "/secret"}\n{"path": "/v2"}\n'}[setup]
