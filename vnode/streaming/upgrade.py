"""Upgraded connections: the runtime's side (a raw HTTP/1.1 upgrade) and the client's (taken over
from aiohttp), and the byte splice between them.

aiohttp's parser knows only ``websocket`` and ``tcp`` upgrades; for ``SPDY/3.1`` the connection is
taken over here: a parser that hands every further byte to a ``StreamReader`` is installed on the
request's protocol (as aiohttp's own WebSocket response does), then the 101 head is written. After
that the two sides are plain byte streams.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from vnode import errors

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 16
MAX_HEAD = 1 << 16
# Headers never forwarded to the runtime: the client's credentials are for vnode, not for it.
_DROP = {"host", "authorization", "content-length", "transfer-encoding", "proxy-authorization"}


@dataclass
class UpstreamHead:
    """The runtime's answer to the upgrade request."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    raw: bytes
    body: bytes = b""


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: UpstreamHead

    def close(self) -> None:
        self.writer.close()


def forwarded_headers(request: web.Request) -> list[tuple[str, str]]:
    """The client's headers as kubelet's upgrade-aware proxy passes them, plus X-Forwarded-For;
    a bearer token riding in the WebSocket protocol list is taken out, like Authorization."""
    out = [
        (k, _without_bearer(v) if k.lower() == "sec-websocket-protocol" else v)
        for k, v in request.headers.items()
        if k.lower() not in _DROP and k.lower() != "x-forwarded-for"
    ]
    peer = request.remote
    prior = request.headers.get("X-Forwarded-For")
    if peer:
        out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    elif prior:
        out.append(("X-Forwarded-For", prior))
    return out


def _without_bearer(value: str) -> str:
    return ", ".join(
        p for p in (x.strip() for x in value.split(",")) if p and not p.startswith("base64url.bearer.")
    )


@functools.cache
def unverified_tls() -> ssl.SSLContext:
    """A client context that does not verify the peer, as kubelet trusts the runtime's
    self-signed streaming server; one per process (building one loads the system CAs, ~20 ms)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_upstream(
    url: str,
    method: str,
    headers: Iterable[tuple[str, str]],
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Upstream:
    """Connect to the runtime's streaming URL and send the upgrade request; read its answer.

    A non-101 answer comes back with its body (bounded) so the caller can relay it. An https URL
    uses ``tls``, by default one that does not verify the peer.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.RuntimeFailure(f"runtime returned an unusable streaming URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        async with asyncio.timeout(timeout):
            context = (tls or unverified_tls()) if parts.scheme == "https" else None
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context, limit=CHUNK * 4)
            writer.write(request)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError as exc:
        raise errors.Unavailable(
            f"the runtime's streaming server did not answer within {timeout:g}s"
        ) from exc
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise errors.Unavailable(f"cannot reach the runtime's streaming server: {exc}") from exc
    head = parse_head(raw)
    upstream = Upstream(reader, writer, head)
    if head.status != 101:
        length = int(head.headers.get("Content-Length", "0") or 0)
        try:
            async with asyncio.timeout(timeout):
                head.body = await reader.readexactly(min(length, MAX_HEAD)) if length else b""
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        upstream.close()
    return upstream


def parse_head(raw: bytes) -> UpstreamHead:
    try:
        text = raw.decode("latin-1")
        status_line, *header_lines = text.split("\r\n")
        _, code, *reason = status_line.split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                headers.add(k.strip(), v.strip())
        return UpstreamHead(int(code), reason[0] if reason else "", headers, raw)
    except ValueError as exc:
        raise errors.RuntimeFailure(
            f"the runtime's streaming server sent a bad response: {raw[:80]!r}"
        ) from exc


class _RawFeed:
    """Stands in for aiohttp's payload parser: every byte after the request goes to ``reader``."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


class UpgradedResponse(web.StreamResponse):
    """A 101 whose body is the raw upgraded stream (no chunking, no length)."""

    def __init__(self, head: UpstreamHead) -> None:
        super().__init__(status=101, reason=head.reason or "Switching Protocols")
        for k, v in head.headers.items():
            if k.lower() not in ("date", "server", "content-length", "content-type"):
                self.headers.add(k, v)
        self._length_check = False  # as aiohttp's WebSocketResponse: the body is not HTTP
        self.force_close()


@dataclass
class ClientConnection:
    """The client's side after the takeover."""

    reader: asyncio.StreamReader
    response: UpgradedResponse

    async def write(self, data: bytes) -> None:
        await self.response.write(data)


async def take_over(request: web.Request, head: UpstreamHead) -> ClientConnection:
    """Send the runtime's 101 to the client and own the connection's bytes from now on."""
    reader = asyncio.StreamReader(limit=CHUNK * 4)
    if request.transport is not None:
        reader.set_transport(request.transport)  # the reader pauses the socket when it is full
    cast(Any, request.protocol).set_parser(_RawFeed(reader))
    request.protocol.keep_alive(False)
    response = UpgradedResponse(head)
    await response.prepare(request)
    return ClientConnection(reader, response)


@dataclass
class Activity:
    """When bytes last moved in either direction, for the idle timeout."""

    last: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


async def within_idle(
    activity: Activity, idle_timeout: float, receive: Callable[[], Awaitable[T]]
) -> T | None:
    """What ``receive`` gives next, or None once nothing moved either way for ``idle_timeout``."""
    while True:
        remaining = idle_timeout - activity.idle_for()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                got = await receive()
        except TimeoutError:
            continue  # the other direction may have moved meanwhile: re-check
        activity.touch()
        return got


async def read_or_idle(reader: asyncio.StreamReader, activity: Activity, idle_timeout: float) -> bytes | None:
    """The next chunk; b"" at EOF; None when the session has been idle for ``idle_timeout``."""
    return await within_idle(activity, idle_timeout, lambda: reader.read(CHUNK))


async def splice(client: ClientConnection, upstream: Upstream, idle_timeout: float) -> str:
    """Copy bytes both ways until one side closes or nothing moves for ``idle_timeout``.

    Returns why it ended (for the log). Either side closing ends the session: the streaming
    protocols end with a connection close, never with a half-close.
    """
    activity = Activity()

    async def to_upstream(chunk: bytes) -> None:
        upstream.writer.write(chunk)
        await upstream.writer.drain()

    return await first_of(
        pump(lambda: read_or_idle(client.reader, activity, idle_timeout), to_upstream, "client closed"),
        pump(lambda: read_or_idle(upstream.reader, activity, idle_timeout), client.write, "runtime closed"),
        cleanup=upstream.close,
    )


async def pump(
    read: Callable[[], Awaitable[bytes | None]], write: Callable[[bytes], Awaitable[None]], closed: str
) -> str:
    """Copy from ``read`` (b"" at the end, None when idle too long) to ``write``; why it stopped."""
    while True:
        chunk = await read()
        if chunk is None:
            return "idle timeout"
        if not chunk:
            return closed
        await write(chunk)


async def first_of(*coros: Any, cleanup: Any) -> str:
    """Run the pumps; the first to finish ends the others. Connection errors count as closes."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        exc = task.exception()
        if exc is None:
            return str(task.result())
        if isinstance(exc, (OSError, asyncio.IncompleteReadError, ConnectionError)):
            return f"connection error: {exc}"
        raise exc
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cleanup()
