"""REST: TF Serving's API and KServe v2 (Open Inference Protocol, with the binary tensor
extension), plus /metrics and /openapi.json, as one Starlette app.

Model names in URLs are looked up in the manager's table only; they never touch a path.
Inference runs on the batcher's threads; handlers only await its futures.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InputError
from shipyard.serve import codec, protocol
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
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)

    # -- plumbing -------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        self.check_bearer(request.headers.get("authorization", ""))

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise TooLargeError(f"request body of {declared} bytes is above the limit of {self.max_request_bytes}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_request_bytes:
                    raise TooLargeError(f"request body above the limit of {self.max_request_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGoneError(f"the client disconnected after {size} bytes of the body") from None
        return b"".join(chunks)

    async def _handle(self, request: Request, protocol_name: str, model: str, work, public: bool = False) -> Response:
        start = time.perf_counter()
        try:
            if not public:
                self._check_auth(request)
            response = await work()
            code = response.status_code
        except Exception as exc:
            code, _ = status_of(exc)
            message = str(exc.message if hasattr(exc, "message") else exc) if code != 500 else f"internal error: {exc.__class__.__name__}"
            if code == 500:
                logging.getLogger("shipyard.serve").exception("internal error")
            response = JSON({"error": message}, status_code=code,
                                    headers={"WWW-Authenticate": "Bearer"} if code == 401 else None)
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(self.metric_model(model), protocol_name, code, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({"ts": round(time.time(), 3), "protocol": protocol_name, "method": request.method,
                                        "path": request.url.path, "model": model, "status": code,
                                        "ms": round(elapsed * 1e3, 3)}))
        return response

    async def _json(self, request: Request) -> Any:
        body = await self._body(request)
        try:
            return _loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the body is not valid JSON ({exc})") from None

    async def _infer(self, name: str, feeds, version: int | None = None, label: str | None = None):
        servable, future = self.manager.submit(name, feeds, version, label)
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
                raise InputError(f"'{verb}' is not supported: shipyard serves the predict API")
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
                return JSON(protocol.kserve_metadata(self.manager, name, version))
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
        header_len = request.headers.get(HEADER_LENGTH)
        if header_len is not None:
            if not (header_len.isascii() and header_len.isdigit()) or int(header_len) > len(raw):
                raise InputError(f"{HEADER_LENGTH} must be a byte count within the body")
            head, binary = raw[:int(header_len)], memoryview(raw)[int(header_len):]
        else:
            head, binary = raw, memoryview(b"")
        try:
            body = _loads(head)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"the inference header is not valid JSON ({exc})") from None
        limits = self.limits(self.manager.resolve(name, version))
        feeds, wanted, binary_out = decode_kserve_request(body, binary, limits)
        servable, outputs = await self._infer(name, feeds, version)
        outputs = protocol.filter_outputs(outputs, [w for w, _ in wanted] if wanted else None)
        want_binary = {w: b for w, b in wanted} if wanted else {}
        tensors, blobs = [], []
        for out_name, arr in outputs.items():
            entry: dict[str, Any] = {"name": out_name, "datatype": codec.kserve_datatype(arr.dtype.name),
                                     "shape": list(arr.shape)}
            if want_binary.get(out_name, binary_out):
                blob = codec.to_bytes(arr)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = codec.to_json_values(arr)
            tensors.append(entry)
        result: dict[str, Any] = {"model_name": name, "model_version": str(servable.version), "outputs": tensors}
        if isinstance(body.get("id"), str):
            result["id"] = body["id"]
        head_out = _dumps(result)
        if not blobs:
            return Response(head_out, media_type="application/json")
        return Response(head_out + b"".join(blobs), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head_out))})

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


def decode_kserve_request(body: Any, binary: memoryview, limits: codec.Limits | None = None):
    """(feeds, [(output name, binary?)], binary-by-default) from a KServe v2 infer request.
    Each tensor's declared shape passes ``limits`` before its data is decoded."""
    limits = limits if limits is not None else codec.Limits()
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise InputError("the body must be an object with a non-empty 'inputs' list")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("'parameters' must be an object")
    feeds, offset = {}, 0
    for i, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InputError(f"inputs[{i}] must be an object with a 'name'")
        what = f"input '{tensor['name']}'"
        shape = codec.check_shape(tensor.get("shape"), what)
        limits.admit(tensor["name"], shape, codec.numpy_dtype(tensor.get("datatype")), what)
        tparams = tensor.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise InputError(f"{what}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InputError(f"{what}: binary_data_size {size!r} does not fit the binary data after the header")
            feeds[tensor["name"]] = codec.from_bytes(binary[offset:offset + size], tensor.get("datatype"), shape, what)
            offset += size
        elif "data" in tensor:
            feeds[tensor["name"]] = codec.from_values(tensor["data"], tensor.get("datatype"), shape, what)
        else:
            raise InputError(f"{what}: give 'data' or parameters.binary_data_size")
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data after the header belong to no input")
    wanted = []
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise InputError("'outputs' must be a list of objects with a 'name'")
        for o in outputs:
            op = o.get("parameters") or {}
            wanted.append((o["name"], bool(op.get("binary_data", params.get("binary_data_output", False))
                                           if isinstance(op, dict) else False)))
    return feeds, wanted, bool(params.get("binary_data_output", False))
