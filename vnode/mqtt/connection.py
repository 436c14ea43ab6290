"""One client connection of the broker: batched writes, back-pressure, and the keepalive timer.

Separate from the broker's packet handling (``vnode.mqtt.broker``) because this is the socket's
side, the same whatever the packets mean: everything written in one loop iteration goes out in
one send, the amount buffered is what the broker's flow control reads, and one timer per
connection (re-armed lazily) closes a client silent past its keepalive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vnode.mqtt import codec
from vnode.mqtt.sessions import Session

log = logging.getLogger(__name__)


class Closed(Exception):
    """This connection ends (the reason is logged where it is raised)."""


class Connection:
    """A connected client; ``expired`` is called when the keepalive closes it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, expired: Callable[[], None]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session: Session | None = None
        self.will: codec.Will | None = None
        self.keepalive = 0
        self.wake = asyncio.Event()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._expired = expired
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.last_seen = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> None:
        """Queue bytes for the socket; everything written in one loop iteration goes out in one
        send (a burst of PUBACKs and deliveries costs one system call, not one each)."""
        if self.writer.is_closing():
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_size += len(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            if not self.writer.is_closing():
                self.writer.write(data)

    def buffered(self) -> int:
        return self._pending_size + self.writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def watch(self, limit: float) -> None:
        """Close the connection once nothing has arrived for ``limit`` seconds (one timer per
        connection, re-armed lazily, instead of a timeout around every read)."""
        self._watchdog = self._loop.call_later(limit, self._check, limit)

    def _check(self, limit: float) -> None:
        idle = self._loop.time() - self.last_seen
        if idle < limit:
            self._watchdog = self._loop.call_later(limit - idle, self._check, limit)
            return
        self._watchdog = None
        self._expired()
        client_id = self.session.client_id if self.session is not None else self.peer
        log.info("mqtt: %s silent past 1.5 x keepalive %ds", client_id, self.keepalive)
        self.writer.transport.abort()

    def unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        """End the connection from outside (a takeover, the broker stopping)."""
        self.flush()
        self.writer.close()
        self.wake.set()
