"""The probe handlers against real sockets on this host (an aiohttp server, a closed port) and an
ExecSync stand-in: kubelet's headers, status ranges, redirect rule, caps and messages."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from vnode import errors
from vnode.probes.handlers import MAX_OUTPUT, Container, Handlers, Outcome, ProbeError
from vnode.probes.spec import ProbeSpec, ProbeType, Result
from vnode.security.tls import ensure_self_signed


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


async def test_https_is_not_verified(tmp_path: Path, handlers: Handlers) -> None:
    """A self-signed certificate for another name: kubelet's probe does not verify it."""
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    ensure_self_signed(cert, key, hostnames=["elsewhere.invalid"], ips=[])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = Site()
    await site.runner.setup()
    tcp = web.TCPSite(site.runner, "127.0.0.1", 0, ssl_context=context)
    await tcp.start()
    try:
        port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        assert await handlers.run(http(port, "/ok", scheme="HTTPS"), POD) == Outcome(Result.SUCCESS, "fine")
    finally:
        await site.runner.cleanup()


class HealthServer:
    """grpc.health.v1.Health/Check answering per service; it keeps the requests it got."""

    def __init__(self, *, implemented: bool = True) -> None:
        self.requests: list[bytes] = []
        self.server = grpc.aio.server()
        if implemented:
            handler = grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(self.check)}
            )
            self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def check(self, request: bytes, context: Any) -> bytes:
        self.requests.append(request)
        return b"\x08\x01" if request == b"" else b"\x08\x02"  # SERVING for "", else NOT_SERVING


async def test_grpc_health_sends_the_service_and_reads_the_status(handlers: Handlers) -> None:
    health = HealthServer()
    await health.server.start()
    try:
        plain = ProbeSpec(ProbeType.READINESS, "grpc", {"port": health.port})
        assert await handlers.run(plain, POD) == Outcome(Result.SUCCESS, "service healthy")
        named = ProbeSpec(ProbeType.READINESS, "grpc", {"port": health.port, "service": "db"})
        unhealthy = Outcome(Result.FAILURE, 'service unhealthy (responded with "NOT_SERVING")')
        assert await handlers.run(named, POD) == unhealthy
        assert health.requests == [b"", b"\x0a\x02db"]  # HealthCheckRequest{service: "db"}
    finally:
        await health.server.stop(None)


async def test_grpc_without_the_health_service(handlers: Handlers) -> None:
    bare = HealthServer(implemented=False)
    await bare.server.start()
    try:
        spec = ProbeSpec(ProbeType.LIVENESS, "grpc", {"port": bare.port})
        outcome = await handlers.run(spec, POD)
        assert outcome.result == Result.FAILURE
        assert outcome.output.startswith(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health)"
        )
    finally:
        await bare.server.stop(None)
