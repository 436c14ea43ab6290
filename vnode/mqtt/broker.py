"""The broker: sessions, subscriptions, retained messages, wills, keepalive, delivery.

One ``Broker`` owns all state; each connection is one task reading packets and one sender task
writing its session's queue. What a connection does wrong costs only that connection: a malformed
packet, a protocol violation, a silent client past 1.5 x its keepalive, all close it and publish
its will, and nothing else.

Delivery: a publish is routed at once into the queue of every session with a matching
subscription (once per session, at the highest QoS of its matching subscriptions, capped by the
publish's). A queue holds at most ``queue_size`` messages; when full, the oldest is dropped and
counted (``dropped``). The sender writes queued messages while fewer than ``max_inflight`` QoS 1
messages await their PUBACK, so a client that stops acknowledging stops receiving QoS 1 but keeps
its place, and nothing grows without bound. Persistent sessions (clean session 0) keep their
subscriptions, their QoS 1 messages and the unacknowledged ones while disconnected; those are sent
again (DUP set) when the client returns.

QoS 2: an incoming QoS 2 publish is completed (PUBREC, PUBREL, PUBCOMP, delivered once); a QoS 2
subscription is granted QoS 1, so outgoing messages are at most QoS 1.

Clients may publish to any ``$`` topic except ``$SYS/...`` (KubeEdge's devices use ``$hw/`` and
``$ke/``); a ``$SYS`` publish is acknowledged and dropped (counted), the client stays connected.
vnode's own modules publish with ``publish`` and receive with ``listen``: in-process, no client.

This module is the protocol: handshake, packets, routing and delivery. The sessions and retained
messages and their saving in the store are ``vnode.mqtt.sessions``; a connection's socket side
(batched writes, keepalive timer) is ``vnode.mqtt.connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vnode.mqtt import codec, topics
from vnode.mqtt.codec import Ack, Bare, Connack, ConnackCode, Connect, Publish, Type
from vnode.mqtt.connection import Closed, Connection
from vnode.mqtt.sessions import Message, Outgoing, Persistence, Session
from vnode.store import Store

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # a connection must send CONNECT within this
MAX_INFLIGHT = 20  # unacknowledged QoS 1 messages per session (mosquitto's default)
WRITE_HIGH_WATER = 256 * 1024  # the sender waits for the socket below this before writing more
SAVE_INTERVAL = 1.0  # persistent sessions are saved this often (and when the broker closes)


@dataclass
class Stats:
    """Counters for ``vnode status`` and ``/metrics``."""

    received: int = 0  # PUBLISH packets from clients
    delivered: int = 0  # PUBLISH packets written to clients
    dropped: int = 0  # messages dropped from full session queues
    malformed: int = 0  # connections closed for a malformed packet or a protocol violation
    refused_sys: int = 0  # client publishes to $SYS, acknowledged and dropped
    wills: int = 0  # will messages published
    expired: int = 0  # connections closed by the keepalive


Listener = Callable[[Message], None]


class Broker:
    """See the module docstring. ``start`` binds, ``serve`` runs until cancelled, ``close`` ends."""

    def __init__(
        self,
        *,
        queue_size: int = 100,
        max_packet_size: int = 1 << 20,
        max_inflight: int = MAX_INFLIGHT,
        credentials: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        store: Store | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.max_packet_size = max_packet_size
        self.max_inflight = max_inflight
        self.credentials = credentials
        self.ssl_context = ssl_context
        self.stats = Stats()
        self._saved = Persistence(store)
        self.sessions, self.retained = self._saved.load()
        self._index: topics.FilterIndex[str] = topics.FilterIndex()
        for session in self.sessions.values():
            for topic_filter, qos in session.subscriptions.items():
                self._index.add(topic_filter, session.client_id, qos)
        self._listeners: topics.Listeners[Message] = topics.Listeners()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._closing = False

    # -- persistence (vnode.mqtt.sessions) -----------------------------------------------------

    def _changed(self, session: Session) -> None:
        if not session.clean:
            self._saved.session_changed(session.client_id)

    async def save(self) -> None:
        """Write the changed persistent sessions and retained messages (one transaction)."""
        await self._saved.save(self.sessions, self.retained)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Bind and accept connections; returns the bound port (``port`` 0 picks a free one)."""
        self._server = await asyncio.start_server(self._accept, host, port, ssl=self.ssl_context)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    @property
    def connected(self) -> int:
        return sum(1 for s in self.sessions.values() if s.connection is not None)

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for their tasks; wills are not sent
        (the clients did nothing wrong) and persistent sessions are kept."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self.save()

    async def serve(self) -> None:
        """Save changed sessions at most every SAVE_INTERVAL (an idle broker does not wake) until
        cancelled (the node's task group owns this), then close (which saves once more)."""
        try:
            while True:
                await self._saved.unsaved.wait()
                await asyncio.sleep(SAVE_INTERVAL)  # what changes meanwhile goes in the same save
                self._saved.unsaved.clear()
                await self.save()
        finally:
            await self.close()

    # -- in-process hook -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish as vnode itself (any topic name, ``$SYS`` included)."""
        topics.check_name(topic)
        self._route(Message(topic, payload, min(qos, 1), retain))

    def listen(self, topic_filter: str, callback: Listener) -> Callable[[], None]:
        """Call ``callback`` for every message matching ``topic_filter`` (retained ones first);
        returns the function that stops it. Callbacks must not block."""
        topics.check_filter(topic_filter)
        stop = self._listeners.add(topic_filter, callback)
        for message in list(self.retained.values()):
            if topics.matches(topic_filter, message.topic):
                callback(message)
        return stop

    # -- routing -------------------------------------------------------------------------------

    def _route(self, message: Message) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)  # MQTT-3.3.1-10, -11
            self._saved.retained_changed(message.topic)
        best: dict[str, int] = {}
        for client_id, qos in self._index.match(message.topic):
            if qos >= best.get(client_id, -1):
                best[client_id] = qos
        for client_id, qos in best.items():
            session = self.sessions.get(client_id)
            if session is not None:
                self._enqueue(session, Outgoing(message, min(qos, message.qos)))
        self._listeners.deliver(message.topic, message)

    def _enqueue(self, session: Session, out: Outgoing) -> None:
        conn = session.connection
        if conn is None and out.qos == 0:
            return  # an offline persistent session keeps QoS 1 messages only (as mosquitto does)
        if (
            conn is not None
            and not session.queue
            and (out.qos == 0 or len(session.inflight) < self.max_inflight)
            and conn.buffered() < WRITE_HIGH_WATER
            and not conn.writer.is_closing()
        ):
            self._write(conn, session, out)  # nothing waiting: straight to the socket, in order
            if out.qos:
                self._changed(session)
            return
        if len(session.queue) >= self.queue_size:
            session.queue.popleft()
            self.stats.dropped += 1
        session.queue.append(out)
        self._changed(session)
        if session.connection is not None:
            session.connection.wake.set()

    # -- connections ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(reader, writer, expired=self._expired)
        sender: asyncio.Task[None] | None = None
        graceful = False
        try:
            session = await self._handshake(conn)
            if session is None:
                return
            sender = asyncio.create_task(
                self._send_loop(conn, session), name=f"mqtt-send-{session.client_id}"
            )
            graceful = await self._read_loop(conn, session)
        except (ConnectionError, asyncio.IncompleteReadError, Closed, ssl.SSLError, TimeoutError):
            pass
        except codec.MalformedPacket as exc:
            self.stats.malformed += 1
            log.info("mqtt: closing %s: %s", conn.peer, exc)
        except Exception:  # a bug must cost this connection only, never the broker
            log.exception("mqtt: closing %s after an unexpected error", conn.peer)
        except asyncio.CancelledError:
            # The broker is closing. The task ends normally: asyncio's stream callback logs a
            # cancelled connection task as an error.
            pass
        finally:
            self._tasks.discard(task)
            conn.unwatch()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            self._disconnected(conn, graceful)
            conn.flush()
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handshake(self, conn: Connection) -> Session | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                packet = await codec.read_packet(conn.reader, self.max_packet_size)
        except codec.UnacceptableProtocol as exc:
            log.info("mqtt: refusing %s: %s", conn.peer, exc)
            conn.write(codec.encode(Connack(False, ConnackCode.UNACCEPTABLE_PROTOCOL)))
            await conn.drain()
            return None
        if not isinstance(packet, Connect):
            raise codec.MalformedPacket(f"first packet is {type(packet).__name__}, not CONNECT")
        code = self._admit(packet)
        if code is not ConnackCode.ACCEPTED:
            conn.write(codec.encode(Connack(False, code)))
            await conn.drain()
            return None
        client_id = packet.client_id or f"auto-{secrets.token_hex(8)}"
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            session.connection = None
            old.session = None  # the old connection's will still goes out when it closes
            old.close()
        present = session is not None and not packet.clean_session
        if session is None or packet.clean_session:
            if session is not None:
                self._drop_session(session)
            session = Session(client_id, packet.clean_session)
            self.sessions[client_id] = session
        session.clean = packet.clean_session
        session.connection = conn
        self._changed(session)
        conn.session = session
        conn.will = packet.will
        conn.keepalive = packet.keepalive
        conn.write(codec.encode(Connack(present, ConnackCode.ACCEPTED)))
        # Resend what was in flight (DUP), in order, before anything new (MQTT-4.4.0-1).
        for pid, out in list(session.inflight.items()):
            m = out.message
            conn.write(codec.encode_publish(m.topic, m.payload, out.qos, out.retain, True, pid))
        conn.wake.set()
        return session

    def _admit(self, packet: Connect) -> ConnackCode:
        if not packet.client_id and not packet.clean_session:
            return ConnackCode.IDENTIFIER_REJECTED  # MQTT-3.1.3-8
        if self.credentials is not None:
            user, password = self.credentials
            given_user = (packet.username or "").encode()
            given_password = packet.password or b""
            ok_user = hmac.compare_digest(given_user, user.encode())
            ok_password = hmac.compare_digest(given_password, password.encode())
            if not (ok_user and ok_password):
                return ConnackCode.BAD_CREDENTIALS
        return ConnackCode.ACCEPTED

    async def _read_loop(self, conn: Connection, session: Session) -> bool:
        """Serve packets until DISCONNECT (True) or the connection ends (an exception)."""
        if conn.keepalive:
            conn.watch(conn.keepalive * 1.5)
        loop = asyncio.get_running_loop()
        served = 0
        while True:
            served += 1
            if served % 64 == 0:
                await asyncio.sleep(0)  # reads of buffered data never suspend: let others run
            packet = await codec.read_packet(conn.reader, self.max_packet_size)
            conn.last_seen = loop.time()
            if conn.session is not session:
                raise Closed()  # taken over by a new connection with the same client id
            if isinstance(packet, Publish):
                self._received(conn, session, packet)
            elif isinstance(packet, Ack):
                self._acked(conn, session, packet)
            elif isinstance(packet, codec.Subscribe):
                self._subscribe(conn, session, packet)
            elif isinstance(packet, codec.Unsubscribe):
                for f in packet.filters:
                    self._changed(session)
                    if session.subscriptions.pop(f, None) is not None:
                        self._index.remove(f, session.client_id)
                conn.write(codec.encode(Ack(Type.UNSUBACK, packet.packet_id)))
            elif isinstance(packet, Bare) and packet.type is Type.PINGREQ:
                conn.write(codec.encode(Bare(Type.PINGRESP)))
            elif isinstance(packet, Bare) and packet.type is Type.DISCONNECT:
                return True
            else:
                raise codec.MalformedPacket(f"a client may not send {type(packet).__name__}")
            if conn.buffered() > WRITE_HIGH_WATER:
                await conn.drain()

    def _received(self, conn: Connection, session: Session, packet: Publish) -> None:
        self.stats.received += 1
        assert packet.qos == 0 or packet.packet_id is not None
        if packet.qos == 2:
            fresh = packet.packet_id not in session.incoming_qos2
            session.incoming_qos2.add(packet.packet_id)  # type: ignore[arg-type]
            if fresh:
                self._accept_publish(packet)
            conn.write(codec.encode(Ack(Type.PUBREC, packet.packet_id)))  # type: ignore[arg-type]
            return
        self._accept_publish(packet)
        if packet.qos == 1:
            conn.write(codec.encode(Ack(Type.PUBACK, packet.packet_id)))  # type: ignore[arg-type]

    def _accept_publish(self, packet: Publish) -> None:
        if packet.topic == "$SYS" or packet.topic.startswith("$SYS/"):
            self.stats.refused_sys += 1
            return
        self._route(Message(packet.topic, packet.payload, min(packet.qos, 1), packet.retain))

    def _acked(self, conn: Connection, session: Session, packet: Ack) -> None:
        if packet.type is Type.PUBACK:
            if session.inflight.pop(packet.packet_id, None) is not None:
                self._changed(session)
                conn.wake.set()
        elif packet.type is Type.PUBREL:
            session.incoming_qos2.discard(packet.packet_id)
            conn.write(codec.encode(Ack(Type.PUBCOMP, packet.packet_id)))  # MQTT-4.3.3-2
        elif packet.type in (Type.PUBREC, Type.PUBCOMP):
            raise codec.MalformedPacket(f"{packet.type.name} for a QoS 2 message never sent")
        else:
            raise codec.MalformedPacket(f"a client may not send {packet.type.name}")

    def _subscribe(self, conn: Connection, session: Session, packet: codec.Subscribe) -> None:
        codes = []
        granted: list[tuple[str, int]] = []
        for topic_filter, qos in packet.topics:
            try:
                topics.check_filter(topic_filter)
            except topics.BadTopic as exc:
                log.info("mqtt: %s: refused subscription: %s", session.client_id, exc)
                codes.append(0x80)
                continue
            qos = min(qos, 1)
            session.subscriptions[topic_filter] = qos
            self._changed(session)
            self._index.add(topic_filter, session.client_id, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        conn.write(codec.encode(codec.Suback(packet.packet_id, codes)))
        # Retained messages after the SUBACK, with the retain flag set (MQTT-3.3.1-6, -8).
        for topic_filter, qos in granted:
            for message in list(self.retained.values()):
                if topics.matches(topic_filter, message.topic):
                    self._enqueue(session, Outgoing(message, min(qos, message.qos), retain=True))

    async def _send_loop(self, conn: Connection, session: Session) -> None:
        """Write the session's queue while the in-flight window allows; waits for the socket."""
        writer = conn.writer
        while not writer.is_closing():
            await conn.wake.wait()
            conn.wake.clear()
            queue = session.queue
            while queue and not writer.is_closing():
                out = queue[0]
                if out.qos and len(session.inflight) >= self.max_inflight:
                    break  # wait for a PUBACK
                queue.popleft()
                self._write(conn, session, out)
                if conn.buffered() > WRITE_HIGH_WATER:
                    await conn.drain()

    def _write(self, conn: Connection, session: Session, out: Outgoing) -> None:
        m = out.message
        pid = None
        if out.qos:
            pid = session.packet_id()
            session.inflight[pid] = out
        conn.write(codec.encode_publish(m.topic, m.payload, out.qos, out.retain, False, pid))
        self.stats.delivered += 1

    def _disconnected(self, conn: Connection, graceful: bool) -> None:
        """A connection ended: its will unless it sent DISCONNECT (a takeover counts as a drop,
        MQTT-3.1.4-2), then its session is dropped or, if persistent, kept for its return."""
        will, conn.will = conn.will, None
        if will is not None and not graceful and not self._closing:
            self.stats.wills += 1
            self._route(Message(will.topic, will.payload, min(will.qos, 1), will.retain))
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        if session.clean and not self._closing:
            self._drop_session(session)
        else:
            # Unsent QoS 0 messages go; QoS 1 ones stay for the client's return.
            session.queue = deque(o for o in session.queue if o.qos)

    def _expired(self) -> None:
        self.stats.expired += 1

    def _drop_session(self, session: Session) -> None:
        self._saved.session_changed(session.client_id)  # deleted at the next save
        for f in session.subscriptions:
            self._index.remove(f, session.client_id)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
