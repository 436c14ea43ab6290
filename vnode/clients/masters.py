"""The API client: JSON over HTTP(S) to one healthy master of several, with failover.

Every request has a deadline. A connection error, a timeout or a 5xx moves the client to the next
master and retries there once per master; a 4xx is the caller's answer (``NotFound``,
``Conflict``, ``InvalidInput``). No master is ever dropped: after a failure the client keeps
cycling through all of them, and it logs which one is active. Watches are streams of JSON lines
read with an idle deadline, so a silently dead link ends the watch (the caller re-lists); and a
failover ends every watch still open on the master left behind at once (the caller resumes on the
new one), since a hung master would otherwise hold them until that deadline.

Over HTTPS the client speaks HTTP/2, as kubelet does: every request and watch of the node shares
one connection with compressed headers, which is most of an idle node's bytes (measured in
``bench.fleet``). Plain ``http://`` masters get HTTP/1.1. The layer speaks plain dicts; nothing
above it sees httpx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from vnode import errors
from vnode.clients import kubeproto
from vnode.clients.kubeconfig import ClusterAccess

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
# With bookmarks asked for, a healthy watch is never silent this long: kube-apiserver sends one about
# every minute (not sooner on an idle resource), so a minute alone would drop healthy watches.
WATCH_IDLE_TIMEOUT = 90.0
USER_AGENT = "vnode/0.1.0"
REQUEST_CONNECTIONS = 20  # HTTP/1.1 connections for requests and the pod and Node watches

# TCP keepalive, so a master that vanished is noticed on an idle connection.
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *(
        (socket.IPPROTO_TCP, getattr(socket, option), value)
        for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
        if hasattr(socket, option)
    ),
]
_TRANSPORT_ERRORS = (httpx.TransportError, httpx.StreamError, TimeoutError)


class Masters:
    """See the module docstring. ``close()`` releases the connections."""

    def __init__(
        self,
        access: ClusterAccess,
        *,
        limit: int = REQUEST_CONNECTIONS,
        on_response: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.access = access
        self.limit = limit  # HTTP/1.1 connections at once (each open watch holds one); HTTP/2 needs one
        self.on_response = on_response  # (method, host, code or "<error>"): the node's metrics
        self.active = 0
        self._client: httpx.AsyncClient | None = None
        self._moved = asyncio.Event()  # set (and replaced) when the active master changes

    @property
    def server(self) -> str:
        return self.access.servers[self.active]

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            tls = self.access.ssl_context
            transport = httpx.AsyncHTTPTransport(
                verify=tls if tls is not None else False,
                http2=tls is not None,
                limits=httpx.Limits(max_connections=self.limit, max_keepalive_connections=self.limit),
                socket_options=_KEEPALIVE,
            )
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if self.access.token:
                headers["Authorization"] = f"Bearer {self.access.token}"
            self._client = httpx.AsyncClient(transport=transport, headers=headers, trust_env=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _fail_over(self, server: str, problem: str) -> None:
        if self.access.servers[self.active] != server:
            return  # another request already moved on
        self.active = (self.active + 1) % len(self.access.servers)
        self._moved.set()
        self._moved = asyncio.Event()
        if len(self.access.servers) > 1:
            log.warning("master %s failed (%s); active master is now %s", server, problem, self.server)

    def _count(self, method: str, server: str, code: str) -> None:
        if self.on_response is not None:
            self.on_response(method, urlsplit(server).netloc, code)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
        answer: bool = True,
    ) -> Any:
        """The decoded JSON answer; vnode errors for 4xx; ``Unavailable`` if every master failed.

        ``answer=False`` is for a write whose answer the caller does not read: it is asked for in
        protobuf (half the bytes) and None is returned."""
        headers = {} if answer else {"Accept": kubeproto.CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = content_type
        problems = []
        for _ in range(len(self.access.servers)):
            server = self.server
            try:
                async with asyncio.timeout(timeout):
                    resp = await self._http().request(
                        method,
                        server + path,
                        params=params,
                        content=None if body is None else json.dumps(body).encode(),
                        headers=headers,
                        timeout=timeout,
                    )
                self._count(method, server, str(resp.status_code))
                if resp.status_code >= 500:
                    raise _ServerError(f"{resp.status_code} {_message(resp.content)}")
                if resp.status_code >= 400:
                    raise _client_error(resp.status_code, resp.content, f"{method} {path}")
                if not answer:
                    return None
                return json.loads(resp.content) if resp.content else None
            except (*_TRANSPORT_ERRORS, _ServerError, ValueError) as exc:
                if not isinstance(exc, _ServerError | ValueError):
                    self._count(method, server, "<error>")
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                problems.append(f"{server}: {problem}")
                self._fail_over(server, problem)
        raise errors.Unavailable(f"{method} {path}: every master failed: {'; '.join(problems)}")

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Events of a watch on the active master until it ends; ``Unavailable`` if it breaks."""
        server = self.server
        moved = self._moved
        query = {**params, "watch": "true", "allowWatchBookmarks": "true"}
        try:
            async with self._http().stream(
                "GET",
                server + path,
                params=query,
                timeout=httpx.Timeout(REQUEST_TIMEOUT, read=WATCH_IDLE_TIMEOUT),
            ) as resp:
                if resp.status_code >= 500:
                    raise _ServerError(f"{resp.status_code}")
                if resp.status_code >= 400:
                    raise _client_error(resp.status_code, await resp.aread(), f"watch {path}")
                lines = resp.aiter_lines()
                while (line := await _next_line(lines, moved)) is not None:
                    if line.strip():
                        yield json.loads(line)
        except (*_TRANSPORT_ERRORS, _ServerError, ValueError) as exc:
            if moved.is_set():
                return  # ended because the client moved on: the caller resumes on the new master
            self._fail_over(server, f"watch: {type(exc).__name__}: {exc}")
            raise errors.Unavailable(f"watch {path} on {server}: {type(exc).__name__}: {exc}") from exc


async def _next_line(lines: AsyncIterator[str], moved: asyncio.Event) -> str | None:
    """The watch's next line; None at its end, or once the client has moved to another master
    (the stream is then left, which closes it)."""
    if moved.is_set():
        return None
    reading = asyncio.ensure_future(anext(lines))
    waiting = asyncio.ensure_future(moved.wait())
    try:
        await asyncio.wait((reading, waiting), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not reading.done():
            reading.cancel()
        await asyncio.gather(reading, waiting, return_exceptions=True)
    if not reading.done() or reading.cancelled():
        return None
    try:
        return reading.result()
    except StopAsyncIteration:
        return None


class _ServerError(Exception):
    """A 5xx: the master is unwell, try another."""


def _message(body: bytes) -> str:
    """A failed request's reason: the message of its Status (JSON or protobuf), else its text."""
    from_protobuf = kubeproto.status_message(body)
    if from_protobuf is not None:
        return from_protobuf[:300]
    text = body.decode(errors="replace")
    try:
        return str(json.loads(text).get("message", text))[:300]
    except (ValueError, AttributeError):
        return text[:300]


def _client_error(code: int, body: bytes, what: str) -> errors.VnodeError:
    message = f"{what}: {code} {_message(body)}"
    if code == 404:
        return errors.NotFound(message)
    if code == 409:
        return errors.Conflict(message)
    if code == 410:
        return errors.Expired(message)
    if code == 422:
        return errors.Unprocessable(message)
    if code in (401, 403):
        return errors.Unavailable(f"not allowed: {message}")
    return errors.InvalidInput(message)
