"""uvicorn's httptools protocol, writing a response's head and body with one send instead of two.

uvicorn writes the status line and headers as soon as the app starts its response, then the
body as a second write: two send() system calls per answer. On small answers (a tiny model's
JSON) those syscalls are the largest single cost of a request (measured with py-spy: the
write inside uvicorn's ``send`` held the GIL for more than half the samples), so the head is
held back until the body's first write and both go out together. Nothing else changes: the
bytes on the wire are the same, and anything that is not the head (``100 Continue``, later
body chunks, a close) is written or done at once, after whatever was held.
"""
from __future__ import annotations

from typing import Any


class _HeldTransport:
    """The connection's transport, holding writes while ``hold`` is set (the response head)."""

    __slots__ = ("held", "hold", "real")

    def __init__(self, real) -> None:
        self.real = real
        self.hold = False
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.hold:
            self.held.append(data)
        elif self.held:
            self.held.append(data)
            self.flush()
        else:
            self.real.write(data)

    def flush(self) -> None:
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            self.real.write(data)

    def close(self) -> None:
        self.flush()
        self.real.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the real transport's
        return getattr(self.real, name)


def protocol_class():
    """uvicorn's HttpToolsProtocol with the coalescing above, or None without httptools
    (uvicorn then picks its h11 protocol, which writes as it always did)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:
        return None

    class Cycle(RequestResponseCycle):
        async def send(self, message) -> None:
            transport = self.transport
            if not isinstance(transport, _HeldTransport):
                return await super().send(message)
            if message["type"] == "http.response.start":
                transport.hold = True  # the head waits for the body
                try:
                    return await super().send(message)
                finally:
                    transport.hold = False
            try:
                return await super().send(message)
            finally:
                transport.flush()  # nothing stays held past the first body message (HEAD writes no body)

    class Protocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle, app) -> None:
            cycle.__class__ = Cycle  # made by on_headers_complete; its task has not run yet
            cycle.transport = _HeldTransport(cycle.transport)
            super()._start_asgi_task(cycle, app)

    return Protocol
