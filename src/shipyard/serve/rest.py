"""REST: TF Serving's API and KServe v2 (Open Inference Protocol, with the binary tensor
extension), plus /metrics and /openapi.json, as one Starlette app.

Model names in URLs are looked up in the manager's table only; they never touch a path.
Inference runs on the batcher's threads (a tiny model's lone request at once, see batcher.py);
handlers only await its futures. ``POST /v2/models/M[/versions/V]/infer``, the hot path, is a bare
ASGI handler (``_infer_asgi``) answering what the Starlette route answers, byte for byte.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InputError
from shipyard.serve import codec, inference, protocol, tfs_examples
from shipyard.serve.batcher import ALONE
from shipyard.serve.errors import ClientGoneError, NotFoundError, TooLargeError, status_of
from shipyard.serve.manager import Manager
from shipyard.serve.metrics import Metrics

try:  # orjson parses and writes large tensors 2-3x faster than the standard library (serve extra)
    import orjson

    _loads, _dumps = orjson.loads, orjson.dumps
except ImportError:  # pragma: no cover - the standard library still works
    _loads, _dumps = json.loads, lambda obj: json.dumps(obj).encode()

access_log = logging.getLogger("shipyard.serve.access")
HEADER_LENGTH = "inference-header-content-length"


def access_line(ts: float, protocol_name: str, method: str, path: str, model: str, status: int, ms: float) -> str:
    """The access log's JSON line, character for character what ``json.dumps`` of the same dict
    writes, in a fifth of the time (measured 7.5 us for json.dumps on this 7-key dict)."""
    return f'{{"ts": {ts!r}{_middle(protocol_name, method, path, model, status)}{ms!r}}}'


def _middle(protocol_name: str, method: str, path: str, model: str, status: int) -> str:
    """The access line between its two numbers (``ts`` and ``ms``)."""
    q = _quote
    status_text = str(int(status)) if type(status) is int else json.dumps(status)
    return (f', "protocol": {q(protocol_name)}, "method": {q(method)}, "path": {q(path)}, '
            f'"model": {q(model)}, "status": {status_text}, "ms": ')


_MIDDLES: dict[tuple, str] = {}  # (protocol, method, path, model, status) -> _middle of them


def rounded3(x: float) -> str:
    """``repr(round(x, 3))`` (what json.dumps writes for it) in a third of the time: both round
    the exact binary value correctly to 3 decimals, and the shortest repr of the
    result is those digits less trailing zeros (15 significant digits at most below 1e12; 1.6 vs
    0.6 us here, twice per access line)."""
    if not -1e12 < x < 1e12:  # beyond 15 digits, inf, nan: as repr writes them
        return repr(round(x, 3))
    text = f"{x:.3f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


_quote = json.encoder.encode_basestring_ascii  # json.dumps' own string escaping (ensure_ascii)


def write_access_line(line: str) -> None:
    """Log ``line`` on the access logger at INFO. Where every handler the record would reach is a
    plain StreamHandler writing the bare message (what ``shipyard serve`` configures) and nothing
    filters, the line is written to their streams as ``StreamHandler.emit`` would, under each
    handler's lock, without building a LogRecord: the same bytes for ~1 us instead of ~25 (the
    record and the handler chain, measured in-process on a tiny model's request). On an event
    loop the line is buffered until the loop's next turn (see :class:`_AccessBuffer`). Any other
    set-up (a file, a formatter, a filter, pytest's capture) gets the record through ``logging``,
    after whatever lines are buffered."""
    handlers = _plain_handlers(access_log)
    if handlers is None:
        _buffer.flush()  # lines already buffered come first
        # handle(makeRecord(...)) is what info() does, less finding the caller's frame on the stack
        access_log.handle(_access_record(line))
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    _buffer.add(line, handlers, loop)


class _AccessBuffer:
    """Access lines written together once per turn of the event loop (nginx's ``access_log
    buffer=``, bounded by a turn instead of a time): a line written as each request ends costs
    a write() system call and a flush per request; here the lines of every request answered in
    one turn leave in one write, scheduled with ``call_soon`` when the first is buffered, so a
    line is out before the loop waits for anything else. Lines stay in order (one buffer, written
    under its lock); ``MAX_LINES`` buffered are written at once; a line written off the event
    loop, a change of handlers, another set-up's record and shutdown (:func:`flush_access_log`,
    also at exit) write what is buffered first."""

    MAX_LINES = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._handlers: list[logging.StreamHandler] = []

    def add(self, line: str, handlers: list[logging.StreamHandler], loop) -> None:
        with self._lock:
            if self._lines and handlers != self._handlers:
                self._write()
            self._lines.append(line)
            self._handlers = handlers
            if loop is None or len(self._lines) >= self.MAX_LINES:
                self._write()
            elif len(self._lines) == 1:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._lines:  # a read without the lock: a line added meanwhile is written by its own flush
            with self._lock:
                self._write()

    def _write(self) -> None:
        """Write the buffered lines to each handler as StreamHandler.emit would, one write for all (under _lock)."""
        lines, self._lines = self._lines, []
        if not lines:
            return
        for h in self._handlers:
            text = h.terminator.join(lines) + h.terminator
            with h.lock:
                try:
                    h.stream.write(text)
                    h.flush()
                except RecursionError:
                    raise
                except Exception:  # noqa: BLE001 - what StreamHandler.emit does with a failing stream
                    h.handleError(_access_record(text[:-len(h.terminator)] if h.terminator else text))


_buffer = _AccessBuffer()
flush_access_log = _buffer.flush  # shutdown: the lines of the last turn
atexit.register(flush_access_log)


def _access_record(line: str) -> logging.LogRecord:
    return access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, line, None, None)


def _plain_handlers(logger: logging.Logger) -> list[logging.StreamHandler] | None:
    """The handlers an INFO record of ``logger`` reaches (its own, then its ancestors' while it
    propagates), if each is a StreamHandler formatting ``%(message)s`` and no filter applies;
    None otherwise, or when no handler would take it (logging's last resort)."""
    if logger.filters:
        return None
    found, current = [], logger
    while current is not None:
        for h in current.handlers:
            fmt = h.formatter
            if (type(h) is not logging.StreamHandler or h.filters or h.level > logging.INFO or h.lock is None
                    or not (fmt is None or (type(fmt) is logging.Formatter and fmt._fmt == "%(message)s"))):
                return None
            found.append(h)
        current = current.parent if current.propagate else None
    return found or None


def _url_path(scope) -> str:
    """``request.url.path`` without building the whole URL (host header scan, urlsplit): the
    same escaping Starlette's URL applies to the decoded path."""
    return scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


class _ASGI3:
    """A bound method as an ASGI 3 app: servers tell ASGI 2 from 3 by an ``async def __call__``."""

    __slots__ = ("handle",)

    def __init__(self, handle) -> None:
        self.handle = handle

    async def __call__(self, scope, receive, send) -> None:
        await self.handle(scope, receive, send)


def _error_answer(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, JSON body, headers but content-length) of an error answer: the message of a
    client's error, only the class of an internal one (logged here with its traceback)."""
    code, _ = status_of(exc)
    message = str(exc.message if hasattr(exc, "message") else exc) if code != 500 else f"internal error: {exc.__class__.__name__}"
    if code == 500:
        logging.getLogger("shipyard.serve").exception("internal error")
    return code, _dumps({"error": message}), _AUTH_HEADERS if code == 401 else _JSON_HEADERS


def _raw_headers(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    """What ``Response(body, headers=..., media_type=...)`` sends: the given headers, then
    content-length, then content-type (the last of ``headers`` here)."""
    return [*headers[:-1], (b"content-length", str(len(body)).encode()), headers[-1]]


_JSON_TYPE = (b"content-type", b"application/json")
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_JSON_HEADERS = [_JSON_TYPE]
_AUTH_HEADERS = [(b"www-authenticate", b"Bearer"), _JSON_TYPE]
_EMPTY = memoryview(b"")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _dumps(content)


class RestAPI(protocol.Frontend):
    def __init__(self, manager: Manager, metrics: Metrics, auth_token: str | None = None,
                 max_request_bytes: int = 64 << 20, metrics_open: bool = False):
        super().__init__(manager, metrics, auth_token, max_request_bytes)
        self.metrics_open = metrics_open  # --metrics-open: Prometheus scrapes /metrics without the token
        routes = [
            Route("/v1/models/{rest:path}", self.tfs, methods=["GET", "POST"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/{rest:path}", self.kserve, methods=["GET", "POST"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self.no_route, 405: self.no_route})
        self._starlette, self.app = self.app, _ASGI3(self._asgi)
        self._in_flight = 0  # inference requests being handled (on the one event loop)

    async def _asgi(self, scope, receive, send) -> None:
        """Inference (POST to a model) goes straight to its handler, the rest through Starlette.
        The routes above send these paths to the same handlers; what is skipped is the two
        middleware layers and matching the route list (their errors are already answered by
        ``_handle``), ~15 % of a tiny model's request."""
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[len("/v2/models/"):].split("/")
                if len(parts) == 2 or (len(parts) == 4 and parts[1] == "versions"):
                    self._in_flight += 1
                    try:
                        await self._infer_asgi(scope, receive, send, parts)
                    finally:
                        self._in_flight -= 1
                    return
            handler = self.kserve if path.startswith("/v2/models/") else self.tfs if path.startswith("/v1/models/") else None
            if handler is not None:
                scope["path_params"] = {"rest": path[len("/v2/models/"):]}
                self._in_flight += 1
                try:
                    response = await handler(Request(scope, receive, send))
                finally:
                    self._in_flight -= 1
                await response(scope, receive, send)
                return
        await self._starlette(scope, receive, send)

    # -- plumbing -------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        self.check_bearer(request.headers.get("authorization", ""))

    async def _body(self, request: Request) -> bytes:
        return await self._read_body(request.receive, request.headers.get("content-length"))

    async def _read_body(self, receive, declared: str | None) -> bytes:
        """The whole body, refused as soon as it is known to exceed --max-request-mb (by its
        Content-Length, or while it arrives); a client gone before its end is a ClientGoneError."""
        if declared and declared.isascii() and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise TooLargeError(f"request body of {declared} bytes is above the limit of {self.max_request_bytes}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError(f"the client disconnected after {size} bytes of the body")
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_request_bytes:
                    raise TooLargeError(f"request body above the limit of {self.max_request_bytes} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _handle(self, request: Request, protocol_name: str, model: str, work, public: bool = False) -> Response:
        start = time.perf_counter()
        try:
            if not public:
                self._check_auth(request)
            response = await work()
            code = response.status_code
        except Exception as exc:  # noqa: BLE001 - every error is answered; internal ones logged by _error_answer
            code, body, headers = _error_answer(exc)
            response = Response(body, status_code=code)
            response.raw_headers = _raw_headers(headers, body)
        self._done(protocol_name, request.method, request.scope, model, code, start)
        return response

    def _done(self, protocol_name: str, method: str, scope, model: str, code: int, start: float) -> None:
        """What every answer records: the request metrics and the access log line."""
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(self.metric_model(model), protocol_name, code, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            key = (protocol_name, method, scope["path"], model, code)
            middle = _MIDDLES.get(key)
            if middle is None:  # the line between its two numbers, built once per endpoint and answer
                if len(_MIDDLES) >= 4096:  # paths are the clients' choice: bounded
                    _MIDDLES.clear()
                middle = _MIDDLES[key] = _middle(protocol_name, method, _url_path(scope), model, code)
            write_access_line(f'{{"ts": {rounded3(time.time())}{middle}{rounded3(elapsed * 1e3)}}}')

    async def _infer_asgi(self, scope, receive, send, parts: list[str]) -> None:
        """``POST /v2/models/NAME[/versions/V]/infer`` as a bare ASGI handler: what :meth:`kserve`
        and :meth:`_handle` do for it (the same checks, answers, errors, metrics and access log
        line), without Starlette's Request and Response objects around it (headers read from the
        scope in one pass, the answer sent as the two ASGI messages a Response sends)."""
        start = time.perf_counter()
        name = parts[0]
        authorization, declared, header_len = "", None, None
        for key, value in scope["headers"]:  # first occurrence wins, as Starlette's Headers.get
            if key == b"content-length":
                if declared is None:
                    declared = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                if header_len is None:
                    header_len = value.decode("latin-1")
            elif key == b"authorization" and not authorization:
                authorization = value.decode("latin-1")
        try:
            self.check_bearer(authorization)
            version = protocol.parse_version(parts[2]) if len(parts) == 4 else None
            raw = await self._read_body(receive, declared)
            code, body, headers = 200, *await self._kserve_answer(name, version, raw, header_len)
        except Exception as exc:  # noqa: BLE001 - as in _handle
            code, body, headers = _error_answer(exc)
        self._done("kserve", "POST", scope, name, code, start)
        await send({"type": "http.response.start", "status": code, "headers": _raw_headers(headers, body)})
        await send({"type": "http.response.body", "body": body})

    async def _json(self, request: Request) -> Any:
        body = await self._body(request)
        try:
            return _loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the body is not valid JSON ({exc})") from None

    async def _infer(self, name: str, feeds, version: int | None = None, label: str | None = None,
                     servable=None):
        # Alone, a request may run at once on this thread (a tiny model, see batcher.py); with others
        # in flight it is queued, so that the batcher can merge them into one engine call.
        ALONE.set(self._in_flight <= 1)  # this task's context only
        servable, future = self.manager.submit(name, feeds, version, label, resolved=servable)
        if future.done():  # a tiny model's batch of one ran at once (see batcher.py): no loop round trip
            return servable, future.result()
        return servable, await asyncio.wrap_future(future)

    # -- TF Serving -----------------------------------------------------------------------

    async def tfs(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        last = rest.rsplit("/", 1)[-1]
        verb = None
        if ":" in last:
            rest, verb = rest.rsplit(":", 1)
        parts = rest.split("/")
        name = parts[0]

        async def work() -> Response:
            version = label = None
            tail = parts[1:]
            if tail[:1] == ["versions"] and len(tail) >= 2:
                version, tail = protocol.parse_version(tail[1]), tail[2:]
            elif tail[:1] == ["labels"] and len(tail) >= 2:
                label, tail = tail[1], tail[2:]
            if request.method == "GET" and verb is None and tail in ([], ["metadata"]):
                if tail == ["metadata"]:
                    servable = self.manager.resolve(name, version, label)
                    return JSON({"model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                                         "metadata": {"signature_def": {"signature_def": protocol.tfs_signature(servable)}}})
                return JSON({"model_version_status": protocol.tfs_status(self.manager, name, version, label)})
            if request.method == "POST" and verb == "predict" and not tail:
                body = await self._json(request)
                servable = self.manager.resolve(name, version, label)
                feeds, columnar = codec.decode_tfs_json(body, servable.signature, self.max_request_bytes)
                pinned = servable.version if (version is not None or label is not None) else None
                _, outputs = await self._infer(name, feeds, pinned)
                return JSON(codec.encode_tfs_json(outputs, columnar))
            if request.method == "POST" and verb in ("classify", "regress"):
                body = await self._json(request)
                examples, context, signature = tfs_examples.json_examples(body)
                signature = tfs_examples.signature_name(signature)
                servable = self.manager.resolve(name, version, label)
                method = tfs_examples.CLASSIFY if verb == "classify" else tfs_examples.REGRESS
                feeds = tfs_examples.prepare(servable.signature_of(signature), method, examples, context)
                outputs = await asyncio.wrap_future(servable.submit_to(signature, feeds))
                return JSON(tfs_examples.json_answer(method, tfs_examples.answer(method, outputs, len(examples))))
            raise NotFoundError(f"no such endpoint: {request.method} {request.url.path}")

        return await self._handle(request, "tfserving", name, work)

    # -- KServe v2 --------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSON({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.manager.ready()
        return JSON({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        async def work() -> Response:
            return JSON({"name": protocol.SERVER_NAME, "version": protocol.SERVER_VERSION,
                                 "extensions": protocol.EXTENSIONS})
        return await self._handle(request, "kserve", "", work)

    async def kserve(self, request: Request) -> Response:
        parts = request.path_params["rest"].split("/")
        name = parts[0]

        async def work() -> Response:
            tail = parts[1:]
            version = None
            if tail[:1] == ["versions"] and len(tail) >= 2:
                version, tail = protocol.parse_version(tail[1]), tail[2:]
            if request.method == "GET" and tail == []:
                if name == "stats" and version is None:  # GET v2/models/stats: every model
                    return JSON(protocol.model_stats(self.manager, None, None))
                return JSON(protocol.kserve_metadata(self.manager, name, version))
            if request.method == "GET" and tail == ["config"]:
                return JSON(protocol.model_config(self.manager, name, version))
            if request.method == "GET" and tail == ["stats"]:
                return JSON(protocol.model_stats(self.manager, name, version))
            if request.method == "GET" and tail == ["ready"]:
                self.manager.model(name)
                ok = protocol.kserve_ready(self.manager, name, version)
                return JSON({"name": name, "ready": ok}, status_code=200 if ok else 400)
            if request.method == "POST" and tail == ["infer"]:
                return await self._kserve_infer(request, name, version)
            raise NotFoundError(f"no such endpoint: {request.method} {request.url.path}")

        return await self._handle(request, "kserve", name, work)

    async def _kserve_infer(self, request: Request, name: str, version: int | None) -> Response:
        raw = await self._body(request)
        body, headers = await self._kserve_answer(name, version, raw, request.headers.get(HEADER_LENGTH))
        response = Response(body)
        response.raw_headers = _raw_headers(headers, body)
        return response

    async def _kserve_answer(self, name: str, version: int | None, raw: bytes,
                             header_len: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """A KServe v2 inference: (answer body, its headers but content-length; content-type last)."""
        if header_len is not None:
            if not (header_len.isascii() and header_len.isdigit()) or int(header_len) > len(raw):
                raise InputError(f"{HEADER_LENGTH} must be a byte count within the body")
            head, binary = raw[:int(header_len)], memoryview(raw)[int(header_len):]
        else:
            head, binary = raw, _EMPTY
        try:
            body = _loads(head)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the inference header is not valid JSON ({exc})") from None
        servable = self.manager.resolve(name, version)
        infer = inference.from_rest(body, binary, self.limits(servable))
        servable, outputs = await self._infer(name, infer.inputs, version, servable=servable)
        reply = inference.InferResponse(name, str(servable.version), inference.outputs_for(infer, outputs), infer.id)
        head_out, blobs = inference.to_rest(reply, infer, _dumps)
        if not blobs:
            return head_out, _JSON_HEADERS
        return b"".join([head_out, *blobs]), [  # one copy
            (b"inference-header-content-length", str(len(head_out)).encode()), _BINARY_TYPE]

    async def repository_index(self, request: Request) -> Response:
        async def work() -> Response:
            raw = await self._body(request)
            try:
                body = _loads(raw) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise InputError(f"the body is not valid JSON ({exc})") from None
            if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
                raise InputError('the body must be empty or {"ready": true|false}')
            return JSON(protocol.repository_index(self.manager, body.get("ready", False)))
        return await self._handle(request, "kserve", "", work)

    async def no_route(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and methods answer in JSON like every other error (clients parse it)."""
        async def work() -> Response:
            raise NotFoundError(f"no such endpoint: {request.method} {request.url.path}")
        return await self._handle(request, "other", "", work)

    # -- operations -------------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        async def work() -> Response:
            return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")
        return await self._handle(request, "metrics", "", work, public=self.metrics_open)

    async def openapi(self, request: Request) -> Response:
        from shipyard.serve.openapi import OPENAPI

        async def work() -> Response:
            return JSON(OPENAPI)
        return await self._handle(request, "openapi", "", work)

