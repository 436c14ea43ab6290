"""Fuzzing the kubelet API and the local API with generated requests over real sockets.

The two aiohttp apps, each behind its guard, serve on loopback from an event loop in a thread;
hypothesis writes raw HTTP/1.1 requests (methods, paths, query strings, headers, bodies, upgrade
attempts, credentials good and bad) through plain sockets. Every answer must be a status below
500 (or a connection the server closed after a malformed request), and the process's memory and
open file descriptors must stay flat. The default run is short; ``VNODE_FUZZ_REQUESTS=100000``
makes the long one (it prints the figures).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.fakestats import FakePod, FakeStatsRuntime
from vnode import errors
from vnode.api import local
from vnode.api.guard import Guard
from vnode.api.server import KubeletHandlers, KubeletServer, Listener
from vnode.api.stats import StatsHandlers
from vnode.api.streams import StreamHandlers, StreamLimits
from vnode.metrics.node import NodeMetrics
from vnode.provider.protocols import LogTarget, StreamOptions
from vnode.security.authn import Authenticator, User
from vnode.security.authz import AlwaysAllow
from vnode.stats.collector import StatsCollector

REQUESTS = int(os.environ.get("VNODE_FUZZ_REQUESTS", "3000"))
BATCH = 1500
TOKEN = "admin-token-" + "x" * 32
POD = {
    "metadata": {
        "name": "p",
        "namespace": "default",
        "uid": "u",
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": {"nodeName": "edge1", "containers": [{"name": "main", "image": "busybox"}]},
    "status": {"phase": "Running"},
}


class Pods:
    def __init__(self, log: Path) -> None:
        self.log = log

    def list_pods(self) -> list[dict[str, Any]]:
        return [POD]

    def listed_pod(self, uid: str) -> dict[str, Any] | None:
        return POD if uid == POD["metadata"]["uid"] else None

    def add_listener(self, callback: Any) -> None:
        return None

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        if (namespace, pod, container) != ("default", "p", "main"):
            raise errors.NotFound(f'pod "{pod}" not found')

        async def stopped() -> bool:
            return True  # ``follow`` ends at the end of the file

        return LogTarget(str(self.log), stopped)

    # StreamProvider: the known container's sessions go to a runtime that refuses every upgrade
    # (as containerd does for a protocol it lacks), so that no fuzzed session stays open.
    runtime_url = ""

    def _url(self, namespace: str, pod: str, container: str | None = None) -> str:
        if (namespace, pod) != ("default", "p") or container not in (None, "main"):
            raise errors.NotFound(f'pod "{pod}" not found')
        return self.runtime_url

    async def exec_url(self, namespace: str, pod: str, uid: str | None, container: str,
                       command: list[str], options: StreamOptions) -> str:  # fmt: skip
        return self._url(namespace, pod, container)

    async def attach_url(self, namespace: str, pod: str, uid: str | None, container: str,
                         options: StreamOptions) -> str:  # fmt: skip
        return self._url(namespace, pod, container)

    async def port_forward_url(self, namespace: str, pod: str, uid: str | None, ports: list[int]) -> str:
        return self._url(namespace, pod)

    async def run_sync(self, namespace: str, pod: str, uid: str | None, container: str,
                       command: list[str]) -> tuple[bytes, bytes, int]:  # fmt: skip
        self._url(namespace, pod, container)
        return b"ran\n", b"", 0


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The stand-in runtime streaming server: 403 to every request."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nrefused\r\n")
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


async def ok() -> None:
    return None


class Servers:
    """Both apps on loopback, served by a loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        log = tmp / "0.log"
        log.write_bytes(b"".join(b"2026-01-01T00:00:0%dZ stdout F line %d\n" % (i, i) for i in range(10)))
        self.pods = Pods(log)
        self.base = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.listeners: list[Listener] = []
        self.ports: dict[str, int] = {}

    async def _start(self) -> None:
        admin = User("admin", full_access=True)
        authn = Authenticator(static_tokens={TOKEN: admin}, anonymous=False)
        guard = Guard(authn, AlwaysAllow(), "edge1")
        self.runtime = await asyncio.start_server(refuse, "127.0.0.1", 0)
        self.pods.runtime_url = f"http://127.0.0.1:{self.runtime.sockets[0].getsockname()[1]}/exec/token"
        streams = StreamHandlers(self.pods, StreamLimits(creation_timeout=5))
        fake = FakeStatsRuntime([FakePod("p")], "edge1")
        collector = StatsCollector(fake, "edge1", self.base, self.base / "logs")  # type: ignore[arg-type]
        stats = StatsHandlers(collector, NodeMetrics(process=False), "edge1")
        handlers = KubeletHandlers(
            self.pods, self.pods, {"ping": ok, "log": ok}, guard=guard.kubelet, streams=streams, stats=stats
        )
        kubelet = KubeletServer(handlers, name="kubelet")
        await kubelet.start("127.0.0.1", 0, None)
        sources = local.LocalSources(
            self.pods, lambda: {"metadata": {"name": "edge1"}}, local.EmptyObjects(), TOKEN, "v1.31.0-vnode"
        )
        sources.access = guard.local
        sources.streams = streams
        sources.stats = stats
        api = local.LocalApi(sources)
        localapi = Listener(api.app, name="local", setting="x")
        await localapi.start("127.0.0.1", 0, None)
        self.listeners = [kubelet, localapi]
        self.ports = {"kubelet": kubelet.bound_port, "local": localapi.bound_port}

    def __enter__(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for listener in self.listeners:
                await listener.stop(timeout=2)
            self.runtime.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with Servers(tmp_path_factory.mktemp("fuzz")) as s:
        yield s


def exchange(port: int, request: bytes, *, half_close: bool) -> bytes:
    """Send one request and read until the server closes (``Connection: close``); raw garbage
    is followed by a half-close, so that an incomplete request line ends instead of waiting."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early on a bad request; read what it said
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (ConnectionResetError, TimeoutError):
            pass  # a timeout shows as no status at all, which the test counts
    return b"".join(chunks)


def final_status(answer: bytes) -> int:
    """The first non-1xx status of the answer (``Expect: 100-continue`` gets a 100 first); 0: none."""
    for code in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3})", answer):
        if not code.startswith(b"1"):
            return int(code)
    return 0


def rss_and_fds() -> tuple[int, int]:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE"), len(os.listdir("/proc/self/fd"))


# -- the strategies --------------------------------------------------------------------------

SEGMENTS = [
    "healthz", "ping", "log", "syncloop", "pods", "containerLogs", "default", "p", "main", "exec",
    "attach", "portForward", "run", "stats", "summary", "metrics", "resource", "proxy", "logs", "runningpods",
    "configz",
    "api", "v1", "apis", "namespaces", "nodes", "edge1", "configmaps", "secrets", "services",
    "version", "..", ".", "", "%2e%2e", "%00", "%ff", "a" * 300, "☃",
]  # fmt: skip
QUERY_KEYS = [
    "follow", "tailLines", "tail", "sinceSeconds", "sinceTime", "timestamps", "limitBytes", "previous",
    "stream", "verbose", "exclude", "watch", "resourceVersion", "labelSelector", "fieldSelector",
    "limit", "continue", "command", "input", "output", "tty", "port", "cmd", "timeoutSeconds",
    "only_cpu_and_memory",
    "stdin", "stdout", "stderr", "error", "container", "ports",
]  # fmt: skip
QUERY_VALUES = ["", "1", "0", "-1", "true", "false", "abc", "2026-01-01T00:00:00Z", "99999999999999999999",
                "All", "Stdout", "bogus", "a=b,c!=d", "in (x", "metadata.name=p", "%zz", "1e9"]  # fmt: skip
text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
segment = st.one_of(st.sampled_from(SEGMENTS), text.map(lambda s: s.replace("/", "").replace(" ", "%20")))
path = st.lists(segment, max_size=7).map(lambda parts: "/" + "/".join(parts))
query = st.lists(
    st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), text), st.one_of(st.sampled_from(QUERY_VALUES), text)),
    max_size=5,
).map(lambda pairs: "&".join(f"{k}={v}".replace(" ", "%20").replace("#", "%23") for k, v in pairs))
method = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
)
auth = st.sampled_from(
    [
        None,
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",
        "Bearer ",
        "Bearer wrong",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer " + "x" * 5000,
        f"Bearer {TOKEN} extra",
    ]
)
upgrade = st.sampled_from(
    [
        [],
        [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Protocol", "v4.channel.k8s.io")],
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
         ("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
        [("Connection", "Upgrade"), ("Upgrade", "websocket"),
         ("Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.!!!notbase64")],
        [("Connection", "Upgrade"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")],
        [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
         ("Sec-WebSocket-Protocol", "v5.channel.k8s.io, v4.channel.k8s.io")],
        [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
         ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io")],
    ]
)  # fmt: skip
header = st.tuples(
    st.one_of(st.sampled_from(["Accept", "Content-Type", "Host", "Range", "Expect", "Cookie",
                               "X-Forwarded-For", "Sec-WebSocket-Protocol", "Origin"]),
              st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)),
    st.one_of(st.sampled_from(["application/json;as=Table;v=v1;g=meta.k8s.io", "chunked", "100-continue",
                               "-1", "99999999999", "bytes=0-1", "gzip"]), text),
)  # fmt: skip


REAL = {
    "kubelet": ["/healthz", "/healthz/ping", "/healthz/nope", "/pods", "/containerLogs/default/p/main",
                "/containerLogs/default/p/other", "/containerLogs/x/y/z", "/stats/summary", "/metrics",
                "/metrics/resource"],
    "local": ["/version", "/api", "/apis", "/api/v1", "/api/v1/pods", "/api/v1/namespaces/default/pods",
              "/api/v1/namespaces/default/pods/p", "/api/v1/namespaces/default/pods/p/log", "/api/v1/nodes",
              "/api/v1/nodes/edge1", "/api/v1/namespaces/default/configmaps", "/api/v1/secrets",
              "/api/v1/nodes/edge1/proxy/stats/summary", "/api/v1/nodes/edge1/proxy/metrics/resource"],
}  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    target = draw(st.sampled_from(["kubelet", "local"]))
    q = draw(query)
    sane = draw(st.booleans())  # half of them real endpoints with the good token, fuzzed queries
    line_target = (draw(st.sampled_from(REAL[target])) if sane else draw(path)) + (f"?{q}" if q else "")
    headers = [("Host", "127.0.0.1"), ("Connection", "close")]
    token = f"Bearer {TOKEN}" if sane else draw(auth)
    if token is not None:
        headers.append(("Authorization", token))
    headers += draw(upgrade) + draw(st.lists(header, max_size=4))
    body = draw(st.binary(max_size=256))
    framing = draw(st.sampled_from(["none", "length", "chunked", "bad-chunked"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing.endswith("chunked"):
        headers.append(("Transfer-Encoding", "chunked"))
        size = b"%x" % len(body) if framing == "chunked" else b"zz;" + body[:8]  # bad: a complete lie
        body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    raw = f"{'GET' if sane and draw(st.booleans()) else draw(method)} {line_target} HTTP/1.1\r\n"
    raw += "".join(f"{k}: {v}\r\n" for k, v in headers)
    data = raw.encode("utf-8", "surrogateescape") + b"\r\n" + body
    if draw(st.integers(0, 20)) == 0:  # now and then, raw garbage (ended, so the parser decides)
        return target, draw(st.binary(min_size=1, max_size=512)) + b"\r\n\r\n", False
    return target, data, False


def test_fuzz_no_5xx_and_flat_resources(servers: Servers) -> None:
    """Runs in batches of ``BATCH`` examples: hypothesis keeps every example of a run in memory,
    so separate runs let RSS show the servers' memory, measured after the first batch (warm)."""
    seen: dict[int, int] = {}
    marks: list[tuple[int, int]] = []

    @settings(max_examples=min(REQUESTS, BATCH), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(requests())
    def one(case: tuple[str, bytes, bool]) -> None:
        target, data, half_close = case
        answer = exchange(servers.ports[target], data, half_close=half_close)
        status = final_status(answer)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, f"{target}: {data[:300]!r} -> {answer[:300]!r}"

    while sum(seen.values()) < REQUESTS:
        one()
        gc.collect()
        marks.append(rss_and_fds())
    total = sum(seen.values())
    print(f"\nfuzz: {total} requests, statuses {dict(sorted(seen.items()))}")
    (rss0, fds0), (rss1, fds1) = marks[0], marks[-1]
    print(
        f"fuzz: after the first batch RSS {rss0 >> 20} MiB, fds {fds0}; at the end {rss1 >> 20} MiB, {fds1}"
    )
    assert fds1 - fds0 <= 4, (fds0, fds1)
    assert rss1 - rss0 < 16 << 20, (rss0, rss1)
    assert seen.get(200, 0) > 0 and seen.get(401, 0) > 0  # both ways through the guard were taken
    assert seen.get(0, 0) < total // 50, seen  # almost every request got an answer
