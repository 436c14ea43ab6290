"""The broker's sessions and retained messages, and how they are kept in the store.

Separate from the broker's protocol handling (``vnode.mqtt.broker``) because this is the state that
outlives connections, and vnode: a persistent session (clean session 0) keeps its subscriptions
and its QoS 1 messages while the client is away, retained messages stay until replaced, and both
survive a restart of vnode in the store's ``mqtt_sessions`` and ``mqtt_retained`` tables. What is
written there, and when (changes batched, one transaction per save), is decided here only.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vnode import errors
from vnode.store import Delete, Put, Store, layout

if TYPE_CHECKING:  # a connection refers to its session and back
    from vnode.mqtt.connection import Connection

log = logging.getLogger(__name__)

SESSIONS, RETAINED = layout.MQTT_SESSIONS, layout.MQTT_RETAINED


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass
class Outgoing:
    message: Message
    qos: int
    retain: bool = False  # set only for a retained message sent on subscribing (MQTT-3.3.1-8, -9)


@dataclass
class Session:
    """A client's state; survives its connection when the client asked for a persistent session."""

    client_id: str
    clean: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    queue: deque[Outgoing] = field(default_factory=deque)
    inflight: dict[int, Outgoing] = field(default_factory=dict)  # QoS 1 sent, awaiting PUBACK
    incoming_qos2: set[int] = field(default_factory=set)  # QoS 2 received, awaiting PUBREL
    next_id: int = 0
    connection: Connection | None = None

    def packet_id(self) -> int:
        for _ in range(65535):
            self.next_id = self.next_id % 65535 + 1
            if self.next_id not in self.inflight:
                return self.next_id
        raise RuntimeError("no free packet identifier")  # impossible: inflight is bounded


class Persistence:
    """Which persistent sessions and retained messages changed since the last save, and the saves
    themselves; without a store (an in-memory broker) it keeps nothing."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self._dirty: set[str] = set()  # persistent sessions changed since the last save
        self._retained_dirty: set[str] = set()
        self.unsaved = asyncio.Event()  # set when there is something to save

    def load(self) -> tuple[dict[str, Session], dict[str, Message]]:
        """Persistent sessions and retained messages as the last save left them. Messages that
        were in flight are queued again (they go out with new packet identifiers)."""
        sessions: dict[str, Session] = {}
        retained: dict[str, Message] = {}
        if self.store is None:
            return sessions, retained
        for client_id, row in self.store.items(SESSIONS):
            session = Session(client_id, clean=False)
            for topic_filter, qos in row.get("subscriptions", {}).items():
                session.subscriptions[topic_filter] = int(qos)
            for topic, payload, qos, retain in row.get("queue", []):
                session.queue.append(Outgoing(Message(topic, base64.b64decode(payload), qos), qos, retain))
            sessions[client_id] = session
        for topic, row in self.store.items(RETAINED):
            retained[topic] = Message(topic, base64.b64decode(row["payload"]), row["qos"], True)
        if sessions or retained:
            count = len(sessions), len(retained)
            log.info("mqtt: %d session(s), %d retained message(s) from the store", *count)
        return sessions, retained

    def session_changed(self, client_id: str) -> None:
        """A persistent session changed or was dropped (then it is deleted at the next save)."""
        if self.store is not None:
            self._dirty.add(client_id)
            self.unsaved.set()

    def retained_changed(self, topic: str) -> None:
        if self.store is not None:
            self._retained_dirty.add(topic)
            self.unsaved.set()

    async def save(self, sessions: dict[str, Session], retained: dict[str, Message]) -> None:
        """Write the changed persistent sessions and retained messages (one transaction)."""
        if self.store is None or not (self._dirty or self._retained_dirty):
            return
        ops: list[Put | Delete] = []
        for client_id in self._dirty:
            session = sessions.get(client_id)
            if session is None or session.clean:
                ops.append(Delete(SESSIONS, client_id))
                continue
            pending = [session.inflight[pid] for pid in sorted(session.inflight)] + list(session.queue)
            queue = [
                [o.message.topic, base64.b64encode(o.message.payload).decode(), o.qos, o.retain]
                for o in pending
                if o.qos
            ]
            ops.append(Put(SESSIONS, client_id, {"subscriptions": session.subscriptions, "queue": queue}))
        for topic in self._retained_dirty:
            message = retained.get(topic)
            if message is None:
                ops.append(Delete(RETAINED, topic))
            else:
                value = {"payload": base64.b64encode(message.payload).decode(), "qos": message.qos}
                ops.append(Put(RETAINED, topic, value))
        self._dirty.clear()
        self._retained_dirty.clear()
        try:
            await self.store.write(ops)
        except errors.StoreError as exc:
            log.warning("mqtt: sessions not saved: %s", exc)
