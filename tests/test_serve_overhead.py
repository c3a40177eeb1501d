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


# -- third round: bookkeeping of a lone request, validation facts, buffered access lines --------


def test_a_finished_future_behaves_as_a_future():
    """What a request run at once answers (batcher._Done) works wherever a Future does."""
    import asyncio
    import concurrent.futures as cf

    from shipyard.serve.batcher import _Done

    ok, failed = _Done({"y": 1}), _Done(exception=ValueError("no"))
    assert ok.done() and not ok.cancelled() and not ok.running() and ok.result(0) == {"y": 1} and ok.exception() is None
    with pytest.raises(ValueError, match="no"):
        failed.result()
    assert isinstance(failed.exception(), ValueError) and not ok.cancel()
    seen = []
    ok.add_done_callback(seen.append)  # called at once
    assert seen == [ok]
    done, pending = cf.wait([ok, failed], timeout=0)
    assert done == {ok, failed} and not pending
    assert set(cf.as_completed([ok, failed], timeout=1)) == {ok, failed}

    async def awaited():
        return await asyncio.wrap_future(ok)

    assert asyncio.run(awaited()) == {"y": 1}


def test_inline_and_worker_calls_share_the_slots():
    """With one slot, a call on a caller's thread and a queued call never run at once."""
    from shipyard.serve.batcher import ALONE

    lock, overlaps, gate, started = threading.Lock(), [], threading.Event(), threading.Event()
    running = [0]

    def run(feeds):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        if feeds["x"][0, 0] == 7:
            started.set()
            gate.wait(5)
        with lock:
            running[0] -= 1
        return {"y": feeds["x"]}

    batcher = Batcher(run, BatchingConfig(max_batch_size=8), workers=1, name="s")
    try:
        batcher.submit({"x": np.ones((1, 1))}).result(5)  # timed on the worker: later calls may run inline
        inline = threading.Thread(target=lambda: batcher.submit({"x": np.full((1, 1), 7.0)}).result(5))
        inline.start()
        assert started.wait(5)
        token = ALONE.set(False)
        try:
            queued = batcher.submit({"x": np.ones((1, 1))})  # the slot is taken: queued for the worker
        finally:
            ALONE.reset(token)
        time.sleep(0.2)
        assert not queued.done()  # the worker waits for the slot
        gate.set()
        assert queued.result(5)["y"].shape == (1, 1)
        inline.join(5)
        assert max(overlaps) == 1
    finally:
        batcher.close()


def test_statistics_of_a_lone_call_are_those_of_a_batch_of_one():
    from types import SimpleNamespace

    from shipyard.serve.stats import InferenceStats

    for ok in (True, False):
        one, many = InferenceStats(), InferenceStats()
        one.executed_one(1.0, 3, 1.25, 2.0, ok)
        many.executed([SimpleNamespace(enqueued=1.0, rows=3)], 1.25, 1.25, 2.0, 2.0, ok)
        assert one.triton("m", 1) == many.triton("m", 1)
        one.executed_one(2.0, 0, 2.5, 3.0, ok)
        many.executed([SimpleNamespace(enqueued=2.0, rows=0)], 2.5, 2.5, 3.0, 3.0, ok)
        assert one.triton("m", 1) == many.triton("m", 1)


def _signature(*names, dtype="float32"):
    from shipyard.model import Signature, TensorSpec

    return Signature(tuple(TensorSpec(n, dtype, (-1, 2)) for n in names), (TensorSpec("y", "float32", (-1, 2)),))


@pytest.mark.parametrize("feeds", [
    {"a": np.ones((1, 2), "float32"), "b": np.ones((1, 2), "float32")},
    {"b": np.ones((1, 2), "float64"), "a": [[1.0, 2.0]]},               # cast, a list, other order
    {"a": np.ones((1, 2), "float32"), "c": np.ones((1, 2), "float32")},   # unknown + missing
    {"a": np.ones((1, 2), "float32"), "b": np.ones((1, 3), "float32")},   # a fixed dimension
    {"a": np.ones((1, 2), "int32"), "b": np.ones((1, 2), "float32")},     # dtype kind
    {"a:0": np.ones((1, 2), "float32"), "b": np.ones((1, 2), "float32")},  # ':0'
    {"a": None, "b": np.ones((1, 2), "float32")},
    {"a": np.ones((1, 2), "int32"), "c": np.ones((1, 2), "float32")},     # a wrong dtype and an unknown name
])
def test_validate_feeds_answers_as_resolving_each_name(feeds):
    """The shortcut for feeds named exactly as the inputs gives what the general path gives."""
    from shipyard.runtimes import base

    signature = _signature("a", "b")

    def outcome(given):
        try:
            out = base.validate_feeds(signature, given)
            return {k: (v.dtype.str, v.shape, v.tolist()) for k, v in out.items()}, list(out)
        except Exception as exc:  # noqa: BLE001 - compared below
            return type(exc).__name__, str(exc)

    assert outcome(feeds) == outcome(_Unequal(feeds))


class _Unequal(dict):
    """A mapping whose len() never matches a signature's input count (validate_feeds' general path)."""

    def __len__(self) -> int:
        return 10_000


def test_input_names_resolve_as_the_signature_does():
    from shipyard.serve.codec import input_names

    for names in (("x",), ("x:0",), ("serving_default_image:0", "serving_default_mask:0"), ("a", "a_b")):
        signature = _signature(*names)
        table = input_names(signature)
        assert table  # every input is found by its own name
        for spec in signature.inputs:
            assert table[spec.name] is spec
        for key, spec in table.items():
            assert signature.resolve_input(key) is spec


def test_fast_observe_counts_as_prometheus_does():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from shipyard.serve.metrics import _observer

    values = [0.0, 0.0005, 0.00050001, 0.001, 0.0015, 1, 2, 3, 128, 129, 5.0, 1e9, float("inf"), -1.0]
    texts = []
    for fast in (False, True):
        registry = CollectorRegistry()
        child = Histogram("h", "h", ["m"], buckets=(0.0005, 0.001, 1, 2, 4, 128), registry=registry).labels("m")
        observe = _observer(child) if fast else child.observe
        for v in values:
            observe(v)
        texts.append([line for line in generate_latest(registry).decode().splitlines() if "_created" not in line])
    assert texts[0] == texts[1]
    assert 'h_bucket{le="+Inf",m="m"} 14.0' in texts[1]


def test_rounded_access_numbers_are_what_json_dumps_writes():
    import json
    import random

    from shipyard.serve.rest import rounded3

    rng = random.Random(0)
    values = [0.0, -0.0, 0.0005, 0.0015, 2.0005, 1e-9, 1795328027.5955, 999999999999.9995, 1e12, 1e15, 1e300]
    values += [rng.uniform(0, 2e9) for _ in range(20000)] + [rng.expovariate(1) * 10 ** rng.randint(-6, 11)
                                                            for _ in range(20000)]
    for v in values:
        assert rounded3(v) == json.dumps(round(v, 3)) == repr(round(v, 3)), v
    assert rounded3(float("inf")) == repr(round(float("inf"), 3))  # what the line has always written


def _plain_access_log(monkeypatch):
    """`shipyard serve`'s set-up (a StreamHandler writing the bare message) on a stream that
    records each write() call; called in the test itself (pytest adds its capture handler to
    the root logger for the test's call, which sends lines through logging)."""
    import io
    import logging

    from shipyard.serve import rest

    class Recording(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes = []

        def write(self, text):
            self.writes.append(text)
            return super().write(text)

    stream = Recording()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    monkeypatch.setattr(logging.root, "handlers", [handler])  # pytest's capture handlers set aside
    monkeypatch.setattr(rest.access_log, "level", logging.INFO)
    rest.flush_access_log()
    return stream


def _reference(lines) -> str:
    """What logging's own StreamHandler writes for these lines."""
    import io
    import logging

    from shipyard.serve import rest

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for line in lines:
        handler.handle(rest.access_log.makeRecord(rest.access_log.name, logging.INFO, __file__, 0, line, None, None))
    return out.getvalue()


def test_access_lines_of_one_loop_turn_leave_in_one_write_in_order(monkeypatch):
    import asyncio

    from shipyard.serve import rest

    plain_access_log = _plain_access_log(monkeypatch)

    lines = [rest.access_line(1.5 + i, "kserve", "POST", f"/v2/models/é{i}/infer", "m", 200, 0.25) for i in range(5)]
    seen = {}

    async def serve():
        for line in lines[:3]:
            rest.write_access_line(line)
        seen["during"] = plain_access_log.getvalue()
        await asyncio.sleep(0)  # the loop turns: the buffered lines go out
        seen["after"] = plain_access_log.getvalue()
        for line in lines[3:]:
            rest.write_access_line(line)
        await asyncio.sleep(0)

    asyncio.run(serve())
    assert seen["during"] == ""  # held until the loop's turn ends
    assert seen["after"] == _reference(lines[:3])
    assert plain_access_log.getvalue() == _reference(lines)
    assert plain_access_log.writes == [_reference(lines[:3]), _reference(lines[3:])]  # one write per turn


def test_a_full_access_buffer_is_written_at_once(monkeypatch):
    import asyncio

    from shipyard.serve import rest

    plain_access_log = _plain_access_log(monkeypatch)

    n = rest._AccessBuffer.MAX_LINES
    lines = [f'{{"n": {i}}}' for i in range(n + 2)]

    async def serve():
        for line in lines:
            rest.write_access_line(line)
        return plain_access_log.getvalue()

    during = asyncio.run(serve())
    assert during == _reference(lines[:n])
    assert plain_access_log.getvalue() == _reference(lines)


def test_buffered_access_lines_are_written_at_shutdown_and_before_other_writes(monkeypatch):
    """A loop that stops before its next turn (a server shutting down) leaves its lines to
    flush_access_log (serve() calls it, and it runs at exit); a line written off the loop, or a
    set-up that goes through logging, comes after the lines already buffered."""
    import asyncio
    import logging

    from shipyard.serve import rest

    plain_access_log = _plain_access_log(monkeypatch)

    loop = asyncio.new_event_loop()

    def last_requests():  # answered in the loop's last turn
        rest.write_access_line('{"n": 1}')
        rest.write_access_line('{"n": 2}')
        loop.stop()

    loop.call_soon(last_requests)
    loop.run_forever()
    loop.close()  # the flush scheduled for the next turn never runs
    assert plain_access_log.getvalue() == ""
    rest.flush_access_log()
    assert plain_access_log.getvalue() == _reference(['{"n": 1}', '{"n": 2}'])
    rest.flush_access_log()  # nothing twice
    assert plain_access_log.getvalue() == _reference(['{"n": 1}', '{"n": 2}'])

    async def then_off_the_loop():
        rest.write_access_line('{"n": 3}')
        writer = threading.Thread(target=rest.write_access_line, args=('{"n": 4}',))
        writer.start()
        writer.join()  # the thread wrote before this loop turned

    asyncio.run(then_off_the_loop())
    assert plain_access_log.getvalue() == _reference([f'{{"n": {i}}}' for i in range(1, 5)])

    async def then_through_logging():
        rest.write_access_line('{"n": 5}')
        handler = logging.root.handlers[0]
        handler.setFormatter(logging.Formatter("A %(message)s"))  # no longer the plain set-up
        rest.write_access_line('{"n": 6}')

    asyncio.run(then_through_logging())
    assert plain_access_log.getvalue().splitlines()[-2:] == ['{"n": 5}', 'A {"n": 6}']


def test_serve_writes_every_access_line_before_it_exits(tmp_path):
    """End to end: every request's line is in the log, in order, once the server stops."""
    import json

    import requests

    from shipyard import examples
    from test_serve import Server

    repo = tmp_path / "repo"
    examples.onnx_mlp(repo / "m" / "1" / "model.onnx", seed=0)
    server = Server(repo, "--grpc-port", "-1")
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        session = requests.Session()
        for i in range(40):
            reply = session.post(f"{server.rest}/v2/models/m/infer", json={**body, "id": str(i)})
            assert reply.status_code == 200
            assert session.get(f"{server.rest}/v2/models/m/versions/{i + 2}").status_code == 404
    finally:
        assert server.stop() == 0
    text = (repo.parent / f"serve-{repo.name}.log").read_text()
    logged = [json.loads(line) for line in text.splitlines() if line.startswith('{"ts"')]
    paths = [e["path"] for e in logged if e["path"].startswith("/v2/models/m/")]
    assert paths == [p for i in range(40) for p in ("/v2/models/m/infer", f"/v2/models/m/versions/{i + 2}")]


def test_served_access_lines_are_what_json_dumps_writes(kserve_api, caplog):
    """The line of an answer (its middle kept per endpoint and status, its numbers formatted by
    rounded3), for the same request twice and for paths needing escapes, is json.dumps' own."""
    import json

    api, _ = kserve_api
    path, body, headers, _chunks = _infer_cases()[0]
    paths = [path, path, "/v2/models/m\u00e9\"\\/infer", "/v2/models/m\u00e9\"\\/infer", "/v2/models/m/versions/1/infer"]
    with caplog.at_level("INFO", logger="shipyard.serve.access"):
        for p in paths:
            _call(api.app, p, body, headers)
    lines = [r.getMessage() for r in caplog.records if r.name == "shipyard.serve.access"]
    assert len(lines) == len(paths)
    for line, p in zip(lines, paths):
        entry = json.loads(line)
        assert entry["path"] == p.replace("\\", "%5C") and isinstance(entry["ts"], float) and isinstance(entry["ms"], float)
        assert line == json.dumps(entry)
        assert entry["ts"] == round(entry["ts"], 3) and entry["ms"] == round(entry["ms"], 3)
    assert [json.loads(x)["status"] for x in lines] == [200, 200, 404, 404, 200]
