"""The kubelet API over a real aiohttp server with in-process providers: routes, codes, bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from vnode import errors
from vnode.api.server import KubeletHandlers, KubeletServer
from vnode.provider.protocols import LogTarget

POD = {"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "status": {"phase": "Running"}}


class Provider:
    """Pods and logs from memory, with kubelet's errors for unknown names."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def list_pods(self) -> list[dict[str, Any]]:
        return [POD]

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        if pod != "p":
            raise errors.NotFound(f'pod "{pod}" in namespace "{namespace}" not found')
        if previous:
            raise errors.InvalidInput(f'previous terminated container "{container}" in pod "{pod}" not found')

        async def stopped() -> bool:
            return False

        return LogTarget(str(self.log), stopped)


async def failing() -> None:
    raise errors.Unavailable("containerd is gone")


async def passing() -> None:
    return None


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    log = tmp_path / "0.log"
    log.write_bytes(b"2026-11-23T10:00:00.5Z stdout F hello\n")
    provider = Provider(log)
    checks = {"ping": passing, "runtime": failing}
    server = KubeletServer(KubeletHandlers(pods=provider, logs=provider, health_checks=checks), name="test")
    await server.start("127.0.0.1", 0, None)
    try:
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        await server.stop(timeout=2)


async def fetch(url: str, method: str = "GET") -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_pods_is_a_pod_list(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/pods") as resp:
        assert resp.status == 200
        assert await resp.json() == {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [POD]}


async def test_healthz_reports_failed_checks(base_url: str) -> None:
    status, body, _ = await fetch(f"{base_url}/healthz")
    assert status == 500
    assert body == "[+]ping ok\n[-]runtime failed: reason withheld\nhealthz check failed\n"
    status, body, _ = await fetch(f"{base_url}/healthz?verbose")
    assert "[-]runtime failed: containerd is gone" in body
    assert (await fetch(f"{base_url}/healthz/ping"))[:2] == (200, "ok")
    assert (await fetch(f"{base_url}/healthz/runtime"))[0] == 500
    assert (await fetch(f"{base_url}/healthz/nope"))[0] == 404


async def test_container_logs_and_their_errors(base_url: str) -> None:
    assert (await fetch(f"{base_url}/containerLogs/default/p/c"))[:2] == (200, "hello\n")
    status, body, _ = await fetch(f"{base_url}/containerLogs/default/p/c?timestamps=true")
    assert body == "2026-11-23T10:00:00.500000000Z hello\n"
    status, body, _ = await fetch(f"{base_url}/containerLogs/default/other/c")
    assert status == 404 and 'pod "other" in namespace "default" not found' in body
    assert (await fetch(f"{base_url}/containerLogs/default/p/c?previous=true"))[0] == 400
    assert (await fetch(f"{base_url}/containerLogs/default/p/c?tailLines=-1"))[0] == 422
    assert (await fetch(f"{base_url}/containerLogs/default/p/c?limitBytes=x"))[0] == 400


async def test_other_methods_get_405_with_allow(base_url: str) -> None:
    for method in ("POST", "PUT", "DELETE"):
        status, _, headers = await fetch(f"{base_url}/pods", method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert (await fetch(f"{base_url}/no/such/path"))[0] == 404


async def test_malformed_requests_get_400_without_an_error_log(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad request is the client's doing: 400, and no ERROR with a traceback per request."""
    import asyncio
    import logging

    host, port = base_url.removeprefix("http://").split(":")
    caplog.set_level(logging.DEBUG)
    for garbage in (
        b"GET /pods HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /pods HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(garbage)
        assert b" 400 " in await reader.readline()
        writer.close()
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.WARNING]
    assert any(r.getMessage().startswith("bad request:") for r in caplog.records)
