"""The test control plane's kubelet proxy (pods/log, exec, attach, portforward) against in-process
kubelets over TLS that require the proxy's client certificate: a raw SPDY-style upgrade echo (the
proxy must splice bytes it cannot parse), a WebSocket echo and a streaming log endpoint."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from integration.controlplane import RESOURCES, ControlPlane, Store
from integration.faults import serving
from integration.pki import ClusterPki


@dataclass
class Kubelet:
    """What the fake kubelets saw."""

    targets: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # CNs of the client certificates
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # an upgraded stream ended
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets the log write its 2nd line


def serving_tls(pki: ClusterPki) -> ssl.SSLContext:
    """A kubelet's TLS: its own certificate, client certificates from the cluster CA required."""
    cert, key = pki.issue("kubelet", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_cn(peer: Any) -> str:
    return str(next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName"))


async def spdy_kubelet(seen: Kubelet, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upgrade the proxy can't parse (``SPDY/3.1``): answer 101, then echo raw bytes; ``bye``
    makes it close its side. Paths under ``/exec/default/gone`` get a kubelet's 404."""
    seen.clients.append(client_cn(writer.get_extra_info("peercert")))
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    seen.targets.append(head[0].split(" ")[1])
    seen.headers.append(dict(line.split(": ", 1) for line in head[1:] if line))
    if "/gone/" in head[0]:
        body = b"pod does not exist"
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    else:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if data.endswith(b"bye"):
                break
        seen.closed.set()
    await writer.drain()
    writer.close()


def ws_kubelet(seen: Kubelet) -> web.Application:
    async def attach(request: web.Request) -> web.StreamResponse:
        seen.clients.append(client_cn(request.transport.get_extra_info("peercert")))  # type: ignore[union-attr]
        seen.targets.append(request.path_qs)
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(b"\x01" + msg.data[1:])
        seen.closed.set()
        return ws

    async def logs(request: web.Request) -> web.StreamResponse:
        seen.targets.append(request.path_qs)
        if request.match_info["container"] == "waiting":
            return web.Response(status=400, text='container "waiting" in pod "p" is waiting to start')
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"line 1\n")
        await seen.release.wait()
        await response.write(b"line 2\n")
        return response

    app = web.Application()
    app.router.add_get("/attach/{ns}/{pod}/{container}", attach)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", logs)
    return app


@dataclass
class Cluster:
    url: str
    spdy: Kubelet
    ws: Kubelet


def node(name: str, port: int) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "resourceVersion": ""},
            "status": {"addresses": [{"type": "Hostname", "address": "nowhere.invalid"},
                                     {"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}  # fmt: skip


def pod(name: str, node_name: str, *containers: str, inits: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeName": node_name, "containers": [{"name": c} for c in containers]}
    if inits:
        spec["initContainers"] = [{"name": c} for c in inits]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    store = Store(tmp_path / "cluster.db")
    tls = serving_tls(ClusterPki(store.path))
    spdy, ws = Kubelet(), Kubelet()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await spdy_kubelet(spdy, reader, writer)

    spdy_server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    ws_runner = web.AppRunner(ws_kubelet(ws), shutdown_timeout=0.5)
    await ws_runner.setup()
    await web.TCPSite(ws_runner, "127.0.0.1", 0, ssl_context=tls).start()
    nodes, pods = (next(r for r in RESOURCES if r.plural == p) for p in ("nodes", "pods"))
    objects = [
        (nodes, node("spdy-node", spdy_server.sockets[0].getsockname()[1])),
        (nodes, node("ws-node", ws_runner.addresses[0][1])),
        (pods, pod("p1", "spdy-node", "main")),
        (pods, pod("gone", "spdy-node", "main")),
        (pods, pod("p2", "ws-node", "main")),
        (pods, pod("two", "ws-node", "a", "b", inits=("setup",))),
        (pods, pod("p3", "ws-node", "waiting")),
        (pods, pod("unscheduled", "", "main")),
    ]
    for res, obj in objects:
        ns = obj["metadata"].get("namespace", "")
        store.write(res, ns, obj["metadata"]["name"], lambda old, obj=obj: obj, create=True)
    try:
        async with serving(ControlPlane(store).app) as url:
            yield Cluster(url, spdy, ws)
    finally:
        spdy_server.close()
        await ws_runner.cleanup()


UPGRADE = (
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
    "X-Stream-Protocol-Version: v3.channel.k8s.io\r\nAuthorization: Bearer secret\r\nContent-Length: 0\r\n"
)


async def upgrade(url: str, target: str, headers: str = UPGRADE) -> tuple[bytes, asyncio.StreamReader, Any]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    return head, reader, writer


async def test_spdy_upgrade_is_spliced_both_ways(cluster: Cluster) -> None:
    path = "/api/v1/namespaces/default/pods/p1/exec?command=sh&command=-c&command=echo+hi&stdin=true&tty=true"
    head, reader, writer = await upgrade(cluster.url, path)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n" in head
    # The kubelet's path as kube-apiserver builds it, the client's upgrade headers, no credentials.
    assert cluster.spdy.targets == [
        "/exec/default/p1/main?command=sh&command=-c&command=echo+hi&error=1&input=1&output=1&tty=1"
    ]
    sent = cluster.spdy.headers[0]
    assert sent["Upgrade"] == "SPDY/3.1" and sent["Connection"] == "Upgrade"
    assert "Authorization" not in sent and sent["X-Forwarded-For"] == "127.0.0.1"
    assert cluster.spdy.clients == ["kube-apiserver-kubelet-client"]

    payload = os.urandom(3 << 20)  # more than either side buffers: flow control must hold

    async def send() -> None:
        writer.write(payload)
        await writer.drain()

    sender = asyncio.create_task(send())
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    await sender
    assert echoed == payload

    writer.write(b"bye")  # the kubelet side closes: the client sees the end of the stream
    assert await asyncio.wait_for(reader.read(), 10) == b"bye"
    writer.close()


async def test_client_closing_ends_the_kubelet_stream(cluster: Cluster) -> None:
    head, reader, writer = await upgrade(cluster.url, "/api/v1/namespaces/default/pods/p1/attach?stdin=1")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert cluster.spdy.targets == ["/attach/default/p1/main?error=1&input=1&output=1"]
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    await asyncio.wait_for(cluster.spdy.closed.wait(), 10)


async def test_websocket_upgrade_passes_through(cluster: Cluster) -> None:
    url = f"{cluster.url}/api/v1/namespaces/default/pods/p2/attach?container=main&stdin=true&stdout=true"
    protocols = ("v5.channel.k8s.io", "v4.channel.k8s.io")
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=protocols) as ws:
        assert ws.protocol == "v5.channel.k8s.io"
        for text in (b"hello", b"x" * 200_000):
            await ws.send_bytes(b"\x00" + text)
            assert (await ws.receive_bytes(timeout=10)) == b"\x01" + text
    await asyncio.wait_for(cluster.ws.closed.wait(), 10)
    assert cluster.ws.targets == ["/attach/default/p2/main?error=1&input=1&output=1"]
    assert cluster.ws.clients == ["kube-apiserver-kubelet-client"]


async def test_portforward_path_and_ports(cluster: Cluster) -> None:
    head, _, writer = await upgrade(
        cluster.url, "/api/v1/namespaces/default/pods/p1/portforward?ports=80&ports=8080,9090"
    )
    writer.close()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert cluster.spdy.targets == ["/portForward/default/p1?port=80%2C8080%2C9090"]


async def test_errors_as_the_api_server_answers_them(cluster: Cluster) -> None:
    head, reader, writer = await upgrade(cluster.url, "/api/v1/namespaces/default/pods/gone/exec?command=ls")
    body = await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    writer.close()
    assert head.startswith(b"HTTP/1.1 404 ") and body == b"pod does not exist"  # the kubelet's, relayed

    async with aiohttp.ClientSession() as session:
        base = f"{cluster.url}/api/v1/namespaces/default/pods"
        async with session.post(
            f"{base}/nope/exec?command=ls", headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
        ) as resp:
            assert resp.status == 404 and (await resp.json())["message"] == 'pods "nope" not found'
        async with session.post(f"{base}/p1/exec?command=ls") as resp:
            answer = await resp.json()
            assert resp.status == 400 and answer["message"] == "Upgrade request required"
        upgrade_headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}
        async with session.post(f"{base}/two/exec?command=ls", headers=upgrade_headers) as resp:
            answer = await resp.json()
        assert resp.status == 400 and answer["reason"] == "BadRequest"
        assert answer["message"] == (
            "a container name must be specified for pod two, choose one of: [a b] "
            "or one of the init containers: [setup]"
        )
        async with session.get(f"{base}/two/log") as resp:
            answer = await resp.json()
        assert (
            answer["message"] == "a container name must be specified for pod two, choose one of: [setup a b]"
        )
        async with session.get(f"{base}/p2/log?container=nope") as resp:
            answer = await resp.json()
        assert resp.status == 400 and answer["message"] == "container nope is not valid for pod p2"
        async with session.get(f"{base}/p3/log") as resp:
            answer = await resp.json()  # the kubelet's 400 becomes a BadRequest Status with its text
        assert (
            resp.status == 400 and answer["message"] == 'container "waiting" in pod "p" is waiting to start'
        )
        async with session.get(f"{base}/unscheduled/log") as resp:
            assert resp.status == 200 and await resp.read() == b""


async def test_logs_stream_through_with_the_options_re_encoded(cluster: Cluster) -> None:
    url = f"{cluster.url}/api/v1/namespaces/default/pods/p2/log"
    params = {"follow": "1", "tailLines": "2", "timestamps": "false", "sinceTime": "2026-01-02T03:04:05Z",
              "insecureSkipTLSVerifyBackend": "true"}  # fmt: skip
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert await asyncio.wait_for(resp.content.readline(), 10) == b"line 1\n"  # before the 2nd exists
        cluster.ws.release.set()
        assert await asyncio.wait_for(resp.content.read(), 10) == b"line 2\n"
    assert cluster.ws.targets == [
        "/containerLogs/default/p2/main?follow=true&sinceTime=2026-01-02T03%3A04%3A05Z&tailLines=2"
    ]
