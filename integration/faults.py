"""Test servers: ``serving`` runs any aiohttp handler or app on a free loopback port, and
``FaultyMaster`` gives masters that misbehave, for failover tests. Each is a real listener.

- ``error``: answers every request with 500 and a Status body, as an API server whose etcd is gone;
- ``garbage``: answers 200 with a body that is not JSON, as a proxy's error page would;
- ``silent``: accepts TCP connections (the kernel completes the handshake) and never answers.

Each counts the requests (or connections) it got, so a test can tell it was really tried.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

KINDS = ("error", "garbage", "silent")


@contextlib.asynccontextmanager
async def serving(
    target: web.Application | Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serve ``target`` (an app, or a handler for every method and path) on 127.0.0.1; yields
    its URL and stops it on exit."""
    if isinstance(target, web.Application):
        app = target
    else:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", target)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class FaultyMaster:
    """``async with FaultyMaster(kind) as m: m.url``; see the module docstring."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.requests = 0
        self._stack = contextlib.AsyncExitStack()
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
            sock = self._stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)  # nobody ever accepts, reads or answers
            self.port = int(sock.getsockname()[1])
        else:
            url = await self._stack.enter_async_context(serving(self._answer))
            self.port = int(url.rsplit(":", 1)[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()
