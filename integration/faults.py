"""Masters that misbehave, for failover tests: each is a real listener on a loopback port.

- ``error``: answers every request with 500 and a Status body, as an API server whose etcd is gone;
- ``garbage``: answers 200 with a body that is not JSON, as a proxy's error page would;
- ``silent``: accepts TCP connections (the kernel completes the handshake) and never answers.

Each counts the requests (or connections) it got, so a test can tell it was really tried.
"""

from __future__ import annotations

import socket
from types import TracebackType

from aiohttp import web

KINDS = ("error", "garbage", "silent")


class FaultyMaster:
    """``async with FaultyMaster(kind) as m: m.url``; see the module docstring."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.kind == "error":
            body = '{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcdserver: no leader",'
            body += '"reason":"InternalError","code":500}'
            return web.Response(status=500, text=body, content_type="application/json")
        return web.Response(status=200, text="<html>502 Bad Gateway</html>", content_type="application/json")

    async def __aenter__(self) -> FaultyMaster:
        if self.kind == "silent":
            self._socket = socket.socket()
            self._socket.bind(("127.0.0.1", 0))
            self._socket.listen(64)  # nobody ever accepts, reads or answers
            self.port = int(self._socket.getsockname()[1])
            return self
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._socket is not None:
            self._socket.close()
