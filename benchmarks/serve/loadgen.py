"""A small closed-loop HTTP/1.1 load generator (asyncio + uvloop, keep-alive connections).

Each of ``concurrency`` connections sends the same prebuilt request, waits for the whole
answer, and sends again, for ``seconds`` after a warm-up. Only 127.0.0.1 is ever contacted.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    first_error: str = ""
    cpu_us: float = 0.0  # server CPU per request, filled in by bench_serve.py

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def build_request(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
            "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-length":
            length = int(value.strip())
        elif key == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body)
    return status, await reader.readexactly(length)


async def _connection(port: int, request: bytes, start_at: float, stop_at: float, out: Result) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            status, body = await _read_response(reader)
            t1 = time.perf_counter()
            if t0 >= start_at:
                if status == 200:
                    out.requests += 1
                    out.latencies_ms.append((t1 - t0) * 1e3)
                else:
                    out.errors += 1
                    out.first_error = out.first_error or f"{status} {body[:200]!r}"
    finally:
        writer.close()


async def _run(port: int, request: bytes, concurrency: int, seconds: float, warmup: float) -> Result:
    now = time.perf_counter()
    out = Result(0, 0, seconds, [])
    await asyncio.gather(*(_connection(port, request, now + warmup, now + warmup + seconds, out)
                           for _ in range(concurrency)))
    return out


def run(port: int, request: bytes, concurrency: int, seconds: float = 4.0, warmup: float = 1.0) -> Result:
    try:
        import uvloop

        return uvloop.run(_run(port, request, concurrency, seconds, warmup))
    except ImportError:
        return asyncio.run(_run(port, request, concurrency, seconds, warmup))
