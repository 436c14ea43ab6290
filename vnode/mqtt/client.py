"""The event bus on an external broker (``eventBus.mqttMode`` 1 and 2): vnode as an MQTT client.

As edgecore does, two connections: a subscribing client (``hub-client-sub-<node>``, a persistent
session, so the broker keeps QoS 1 messages for it while vnode is away) and a publishing client
(``hub-client-pub-<node>``). Each reconnects with back-off (0.5 s doubling to 30 s) and the
subscriber subscribes again on every connect. What vnode publishes goes through an outbox: QoS 1
messages stay in it until the broker's PUBACK, messages published while the broker is away wait
in it, and it is kept in the store (table ``mqtt_outbox``), so they survive a vnode restart too. The
outbox is bounded (``limit``): past it the oldest message is dropped and counted.

``FanoutBus`` is mode 1: every publish reaches both brokers, listeners hear both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vnode import errors
from vnode.mqtt import codec, topics
from vnode.mqtt.sessions import Message
from vnode.store import Delete, Put, Store, layout

log = logging.getLogger(__name__)

OUTBOX = layout.MQTT_OUTBOX
MAX_INFLIGHT = 20
KEEPALIVE = 30
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


class _Refused(Exception):
    """The broker answered CONNECT with a refusal."""


@dataclass
class ClientStats:
    connects: int = 0
    published: int = 0  # acknowledged (QoS 1) or written (QoS 0) by the publishing client
    received: int = 0
    dropped: int = 0  # outbox overflow


@dataclass
class _Link:
    """One connection's current socket (None while it is down)."""

    writer: asyncio.StreamWriter | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)


class ExternalBus:
    """See the module docstring. ``run`` keeps both clients connected until cancelled."""

    def __init__(
        self,
        host: str,
        port: int,
        store: Store,
        *,
        sub_client_id: str,
        pub_client_id: str,
        credentials: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limit: int = 10_000,
        keepalive: int = KEEPALIVE,
    ) -> None:
        self.host, self.port = host, port
        self.store = store
        self.sub_client_id, self.pub_client_id = sub_client_id, pub_client_id
        self.credentials = credentials
        self.ssl_context = ssl_context
        self.limit = limit
        self.keepalive = keepalive
        self.stats = ClientStats()
        self._listeners: topics.Listeners[Message] = topics.Listeners()
        self._filters: dict[str, int] = {}  # filter -> listeners using it
        self._pending_subs: set[int] = set()  # SUBSCRIBE packet ids not yet acknowledged
        self._ids = itertools.count(1)
        self._sub = _Link()
        self._pub = _Link()
        # The outbox: sequence number -> message, oldest first; persisted by the publishing loop.
        self._outbox: OrderedDict[int, Message] = OrderedDict()
        self._unsaved: list[int] = []
        self._removed: list[int] = []
        self._inflight: dict[int, int] = {}  # packet id -> sequence number
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        rows = store.items(OUTBOX)
        for key, value in rows:
            self._outbox[int(key)] = Message(
                value["topic"], base64.b64decode(value["payload"]), value["qos"], value["retain"]
            )
        self._seq = itertools.count(max(self._outbox, default=0) + 1)
        if rows:
            log.info("mqtt: %d message(s) from the store wait for the external broker", len(rows))

    # -- the bus -------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        topics.check_name(topic)
        if len(self._outbox) >= self.limit:
            oldest, _ = self._outbox.popitem(last=False)
            self._removed.append(oldest)
            self.stats.dropped += 1
        seq = next(self._seq)
        self._outbox[seq] = Message(topic, payload, min(qos, 1), retain)
        self._unsaved.append(seq)
        self._dirty.set()
        self._wake.set()

    def listen(self, topic_filter: str, callback: Callable[[Message], None]) -> Callable[[], None]:
        topics.check_filter(topic_filter)
        remove = self._listeners.add(topic_filter, callback)
        self._filters[topic_filter] = self._filters.get(topic_filter, 0) + 1
        writer = self._sub.writer
        if writer is not None and self._filters[topic_filter] == 1:
            pid = next(self._ids) % 65535 + 1
            self._pending_subs.add(pid)
            writer.write(codec.encode(codec.Subscribe(pid, [(topic_filter, 1)])))

        def stop() -> None:
            remove()
            self._filters[topic_filter] -= 1
            if not self._filters[topic_filter]:
                del self._filters[topic_filter]

        return stop

    @property
    def connected(self) -> bool:
        return self._sub.connected.is_set() and self._pub.connected.is_set()

    @property
    def subscribed(self) -> bool:
        """Connected, and the broker has acknowledged every listener's subscription."""
        return self.connected and bool(self._filters) and not self._pending_subs

    @property
    def waiting(self) -> int:
        return len(self._outbox)

    # -- connections ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Both clients and the outbox's persistence, until cancelled (the node's task group)."""
        try:
            async with asyncio.TaskGroup() as group:
                sub, pub = self._sub, self._pub
                group.create_task(self._keep(sub, self.sub_client_id, clean=False, serve=self._serve_sub))
                group.create_task(self._keep(pub, self.pub_client_id, clean=True, serve=self._serve_pub))
                group.create_task(self._persist())
        finally:
            await self.flush()  # what was published last is in the store before vnode stops

    async def _keep(self, link: _Link, client_id: str, *, clean: bool, serve: Any) -> None:
        delay = BACKOFF_START
        while True:
            writer = None
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl_context)
                    user, password = self.credentials or (None, None)
                    connect = codec.Connect(
                        client_id,
                        clean_session=clean,
                        keepalive=self.keepalive,
                        username=user,
                        password=password.encode() if password is not None else None,
                    )
                    writer.write(codec.encode(connect))
                    ack = await codec.read_packet(reader, 1 << 24)
                if not isinstance(ack, codec.Connack) or ack.code != codec.ConnackCode.ACCEPTED:
                    raise _Refused(f"CONNACK {ack}")
                self.stats.connects += 1
                log.info("mqtt: %s connected to %s:%d", client_id, self.host, self.port)
                delay = BACKOFF_START
                link.writer = writer
                link.connected.set()
                await serve(reader, writer)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, codec.MalformedPacket, _Refused) as e:
                log.info("mqtt: %s to %s:%d: %s; again in %.1fs", client_id, self.host, self.port, e, delay)
            finally:
                link.writer = None
                link.connected.clear()
                if writer is not None:
                    writer.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> codec.Packet:
        """The next packet; a PINGREQ after a quiet keepalive, the link dropped after two."""
        for _ in range(2):
            try:
                async with asyncio.timeout(self.keepalive):
                    return await codec.read_packet(reader, 1 << 24)
            except TimeoutError:
                writer.write(codec.encode(codec.Bare(codec.Type.PINGREQ)))
        raise TimeoutError("no answer to PINGREQ")

    async def _serve_sub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._pending_subs.clear()
        if self._filters:
            self._pending_subs.add(1)
            writer.write(codec.encode(codec.Subscribe(1, [(f, 1) for f in self._filters])))
        while True:
            packet = await self._read(reader, writer)
            if isinstance(packet, codec.Suback):
                self._pending_subs.discard(packet.packet_id)
                if 0x80 in packet.codes:
                    log.warning("mqtt: the external broker refused a subscription: %s", packet.codes)
            elif isinstance(packet, codec.Publish):
                if packet.qos == 1 and packet.packet_id is not None:
                    writer.write(codec.encode(codec.Ack(codec.Type.PUBACK, packet.packet_id)))
                elif packet.qos == 2 and packet.packet_id is not None:
                    writer.write(codec.encode(codec.Ack(codec.Type.PUBREC, packet.packet_id)))
                self.stats.received += 1
                self._deliver(Message(packet.topic, packet.payload, packet.qos, packet.retain))
            elif isinstance(packet, codec.Ack) and packet.type is codec.Type.PUBREL:
                writer.write(codec.encode(codec.Ack(codec.Type.PUBCOMP, packet.packet_id)))

    def _deliver(self, message: Message) -> None:
        self._listeners.deliver(message.topic, message)

    async def _serve_pub(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._inflight.clear()  # unacknowledged ones are sent again, in order
        self._wake.set()
        sender = asyncio.create_task(self._send(writer))
        try:
            while True:
                packet = await self._read(reader, writer)
                if isinstance(packet, codec.Ack) and packet.type is codec.Type.PUBACK:
                    seq = self._inflight.pop(packet.packet_id, None)
                    if seq is not None and self._outbox.pop(seq, None) is not None:
                        self._removed.append(seq)
                        self._dirty.set()
                        self.stats.published += 1
                    self._wake.set()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        """Write outbox messages not in flight, oldest first, keeping MAX_INFLIGHT QoS 1 open."""
        ids = itertools.count(1)
        while True:
            await self._wake.wait()
            self._wake.clear()
            sending = set(self._inflight.values())
            for seq, message in list(self._outbox.items()):
                if seq in sending:
                    continue
                if message.qos and len(self._inflight) >= MAX_INFLIGHT:
                    break
                pid = None
                if message.qos:
                    pid = next(ids) % 65535 + 1
                    self._inflight[pid] = seq
                else:
                    del self._outbox[seq]
                    self._removed.append(seq)
                    self._dirty.set()
                    self.stats.published += 1
                m = message
                writer.write(codec.encode_publish(m.topic, m.payload, m.qos, m.retain, False, pid))
            await writer.drain()

    async def _persist(self) -> None:
        """Keep the store's outbox in step with the one in memory, a batch at a time."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.flush()
            except errors.StoreError as exc:
                log.warning("mqtt: the outbox could not be stored (kept in memory): %s", exc)

    async def flush(self) -> None:
        """Write the outbox's changes since the last flush to the store (one transaction)."""
        if not self._unsaved and not self._removed:
            return
        ops: list[Put | Delete] = []
        removed = set(self._removed)
        for seq in self._unsaved:
            message = self._outbox.get(seq)
            if message is not None and seq not in removed:
                value = {
                    "topic": message.topic,
                    "payload": base64.b64encode(message.payload).decode(),
                    "qos": message.qos,
                    "retain": message.retain,
                }
                ops.append(Put(OUTBOX, f"{seq:020d}", value))
        ops += [Delete(OUTBOX, f"{seq:020d}") for seq in self._removed]
        self._unsaved.clear()
        self._removed.clear()
        await self.store.write(ops)


class FanoutBus:
    """Mode 1: publishes reach vnode's broker and the external one; listeners hear both."""

    def __init__(self, internal: Any, external: ExternalBus) -> None:
        self.internal = internal
        self.external = external

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.internal.publish(topic, payload, qos, retain)
        self.external.publish(topic, payload, qos, retain)

    def listen(self, topic_filter: str, callback: Callable[[Message], None]) -> Callable[[], None]:
        stops = [self.internal.listen(topic_filter, callback), self.external.listen(topic_filter, callback)]

        def stop() -> None:
            for s in stops:
                s()

        return stop
