"""The API client: JSON over HTTP(S) to one healthy master of several, with failover.

Every request has a deadline. A connection error, a timeout or a 5xx moves the client to the next
master and retries there once per master; a 4xx is the caller's answer (``NotFound``,
``Conflict``, ``InvalidInput``). No master is ever dropped: after a failure the client keeps
cycling through all of them, and it logs which one is active. Watches are streams of JSON lines
read with an idle deadline, so a silently dead link ends the watch (the caller re-lists); and a
failover ends every watch still open on the master left behind at once (the caller resumes on the
new one), since a hung master would otherwise hold them until that deadline.

Writes whose answer the caller does not read (the Lease renewal, six a minute for ever on every
node; status patches; Events) ask for it in protobuf, as kubelet asks for everything: about half
the bytes of its JSON. The layer speaks plain dicts; nothing above it sees aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from vnode import errors
from vnode.clients import kubeproto
from vnode.clients.kubeconfig import ClusterAccess

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
# With bookmarks asked for, a healthy watch is never silent this long: kube-apiserver sends one about
# every minute (not sooner on an idle resource), so a minute alone would drop healthy watches.
WATCH_IDLE_TIMEOUT = 90.0
USER_AGENT = "vnode/0.1.0"


def _keepalive_socket_factory(addr_info: Any) -> socket.socket:
    """Sockets with TCP keepalive, so a master that vanished is noticed on an idle connection."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


class Masters:
    """See the module docstring. ``close()`` releases the connections."""

    def __init__(
        self,
        access: ClusterAccess,
        *,
        limit: int = 20,
        on_response: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.access = access
        self.limit = limit  # connections at once; each open watch holds one
        self.on_response = on_response  # (method, host, code or "<error>"): the node's metrics
        self.active = 0
        self._session: aiohttp.ClientSession | None = None
        self._moved = asyncio.Event()  # set (and replaced) when the active master changes

    @property
    def server(self) -> str:
        return self.access.servers[self.active]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            kwargs: dict[str, Any] = {"ssl": self.access.ssl_context or False, "limit": self.limit}
            try:
                connector = aiohttp.TCPConnector(socket_factory=_keepalive_socket_factory, **kwargs)
            except TypeError:  # aiohttp older than 3.12 has no socket_factory
                connector = aiohttp.TCPConnector(**kwargs)
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if self.access.token:
                headers["Authorization"] = f"Bearer {self.access.token}"
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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

        ``answer=False``: the caller does not read the answer, so it is asked for in protobuf
        and None is returned (a failure's Status is still decoded for its message)."""
        headers = {} if answer else {"Accept": kubeproto.CONTENT_TYPE}
        if body is not None:
            headers["Content-Type"] = content_type
        problems = []
        for _ in range(len(self.access.servers)):
            server = self.server
            try:
                async with self._client().request(
                    method,
                    server + path,
                    params=params,
                    data=None if body is None else json.dumps(body),
                    headers=headers,
                    # an answer not read is small: no compression offered (the header's bytes saved)
                    skip_auto_headers=() if answer else ("Accept-Encoding",),
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    self._count(method, server, str(resp.status))
                    content = await resp.read()
                    if resp.status >= 500:
                        raise _ServerError(f"{resp.status} {_message(content)}")
                    if resp.status >= 400:
                        raise _client_error(resp.status, content, f"{method} {path}")
                    return json.loads(content) if content and answer else None
            except (aiohttp.ClientError, TimeoutError, _ServerError, ValueError) as exc:
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
        closer: asyncio.Task[None] | None = None
        try:
            async with self._client().get(
                server + path,
                params=query,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=REQUEST_TIMEOUT, sock_read=WATCH_IDLE_TIMEOUT
                ),
            ) as resp:
                if resp.status >= 500:
                    raise _ServerError(f"{resp.status}")
                if resp.status >= 400:
                    raise _client_error(resp.status, await resp.read(), f"watch {path}")
                closer = asyncio.create_task(_close_when_set(moved, resp), name="watch-failover")
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, _ServerError, ValueError) as exc:
            if moved.is_set():
                return  # closed because the client moved on: the caller resumes on the new master
            self._fail_over(server, f"watch: {type(exc).__name__}: {exc}")
            raise errors.Unavailable(f"watch {path} on {server}: {type(exc).__name__}: {exc}") from exc
        finally:
            if closer is not None:
                closer.cancel()


async def _close_when_set(moved: asyncio.Event, resp: aiohttp.ClientResponse) -> None:
    """End a watch's response once the client has moved to another master."""
    await moved.wait()
    with contextlib.suppress(Exception):
        resp.close()


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
