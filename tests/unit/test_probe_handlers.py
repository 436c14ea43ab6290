"""The probe handlers against real sockets on this host (an aiohttp server, a closed port) and an
ExecSync stand-in: kubelet's headers, status ranges, redirect rule, caps and messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from vnode import errors
from vnode.probes.handlers import MAX_OUTPUT, Container, Handlers, Outcome, ProbeError
from vnode.probes.spec import ProbeSpec, ProbeType, Result


class Site:
    """A small HTTP server whose answers the test sets; it records what each request carried."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.port = 0
        app = web.Application()
        app.router.add_get("/ok", self.ok)
        app.router.add_get("/missing", self.missing)
        app.router.add_get("/big", self.big)
        app.router.add_get("/here", self.here)
        app.router.add_get("/away", self.away)
        self.runner = web.AppRunner(app)

    async def ok(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.Response(text="fine")

    async def missing(self, _: web.Request) -> web.Response:
        return web.Response(status=404, text="no")

    async def big(self, _: web.Request) -> web.Response:
        return web.Response(text="x" * (5 * MAX_OUTPUT))

    async def here(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def away(self, _: web.Request) -> web.Response:
        # another host name for the same server: kubelet does not follow it
        raise web.HTTPFound(f"http://localhost:{self.port}/ok", text="moved")


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    await s.runner.setup()
    tcp = web.TCPSite(s.runner, "127.0.0.1", 0)
    await tcp.start()
    s.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield s
    finally:
        await s.runner.cleanup()


async def no_exec(container_id: str, command: list[str], timeout: int) -> tuple[bytes, bytes, int]:
    raise AssertionError("not an exec probe")


@pytest.fixture
async def handlers() -> AsyncIterator[Handlers]:
    h = Handlers(no_exec)
    try:
        yield h
    finally:
        await h.close()


def http(port: Any, path: str, **action: Any) -> ProbeSpec:
    return ProbeSpec(ProbeType.READINESS, "httpGet", {"port": port, "path": path, **action})


POD = Container("c1", "127.0.0.1", {"name": "main", "ports": [{"name": "web", "containerPort": 0}]})


async def test_http_sends_kubelets_headers_unless_the_probe_gives_its_own(
    site: Site, handlers: Handlers
) -> None:
    assert await handlers.run(http(site.port, "/ok"), POD) == Outcome(Result.SUCCESS, "fine")
    sent = site.headers[-1]
    assert (sent["User-Agent"], sent["Accept"]) == ("kube-probe/1.37", "*/*")
    own = [{"name": "User-Agent", "value": "mine"}, {"name": "X-Probe", "value": "1"}]
    await handlers.run(http(site.port, "ok", httpHeaders=own), POD)  # a path without "/" gets one
    assert (site.headers[-1]["User-Agent"], site.headers[-1]["X-Probe"]) == ("mine", "1")
    named = Container(
        "c1", "127.0.0.1", {"name": "main", "ports": [{"name": "web", "containerPort": site.port}]}
    )
    assert (await handlers.run(http("web", "/ok"), named)).result == Result.SUCCESS


async def test_http_status_redirects_and_the_body_cap(site: Site, handlers: Handlers) -> None:
    missing = await handlers.run(http(site.port, "/missing"), POD)
    assert missing == Outcome(Result.FAILURE, "HTTP probe failed with statuscode: 404")
    assert await handlers.run(http(site.port, "/here"), POD) == Outcome(Result.SUCCESS, "fine")
    away = await handlers.run(http(site.port, "/away"), POD)
    assert away == Outcome(Result.SUCCESS, "Probe terminated redirects, Response body: moved", warning=True)
    big = await handlers.run(http(site.port, "/big"), POD)
    assert big.result == Result.SUCCESS and len(big.output) == MAX_OUTPUT


async def test_an_unknown_named_port_is_an_error_not_a_failure(handlers: Handlers) -> None:
    with pytest.raises(ProbeError, match="couldn't find port 'http'"):
        await handlers.run(http("http", "/"), POD)


async def test_tcp_refused_and_accepted(site: Site, handlers: Handlers) -> None:
    spec = ProbeSpec(ProbeType.LIVENESS, "tcpSocket", {"port": site.port})
    assert (await handlers.run(spec, POD)).result == Result.SUCCESS
    await site.runner.cleanup()  # the port is closed now
    refused = await handlers.run(spec, POD)
    assert refused == Outcome(Result.FAILURE, f"dial tcp 127.0.0.1:{site.port}: connect: connection refused")


async def test_exec_output_cap_exit_code_and_timeout() -> None:
    calls: list[tuple[str, list[str], int]] = []

    async def exec_sync(container_id: str, command: list[str], timeout: int) -> tuple[bytes, bytes, int]:
        calls.append((container_id, command, timeout))
        if command[0] == "slow":
            raise errors.VnodeError("rpc error: code = DeadlineExceeded desc = timeout 2s exceeded")
        if command[0] == "loud":
            return b"o" * MAX_OUTPUT, b"e" * 10, 0
        return b"out\n", b"err\n", 3

    handlers = Handlers(exec_sync)
    spec = ProbeSpec(ProbeType.LIVENESS, "exec", {"command": ["check", "$(WHAT)"]}, timeout=2)
    env = Container("c1", "", {"name": "main", "env": [{"name": "WHAT", "value": "db"}]})
    assert await handlers.run(spec, env) == Outcome(Result.FAILURE, "out\nerr\n")
    assert calls[-1] == ("c1", ["check", "db"], 2)
    loud = await handlers.run(ProbeSpec(ProbeType.LIVENESS, "exec", {"command": ["loud"]}), env)
    assert loud == Outcome(Result.SUCCESS, "o" * MAX_OUTPUT)  # stdout then stderr, 10 KiB in all
    slow = ProbeSpec(ProbeType.LIVENESS, "exec", {"command": ["slow", "a b"]}, timeout=2)
    assert await handlers.run(slow, env) == Outcome(Result.FAILURE, 'command "slow a b" timed out')
