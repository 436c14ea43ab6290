"""Real MQTT clients for tests: paho-mqtt (its own network thread) wrapped for async tests, and a
raw socket client speaking vnode's codec for what paho will not send (garbage, a dropped socket).

Waiting never blocks the event loop (the broker under test may run in it): blocking waits go to
a thread with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vnode.mqtt import codec

WAIT = 10.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Paho:
    """A paho client; messages land in ``messages``, connection results in ``connacks``."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        clean_session: bool = True,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        ca_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            reconnect_on_failure=False,
        )
        if will is not None:
            self.client.will_set(will[0], will[1], will[2], will[3])
        if ca_file is not None:
            self.client.tls_set(ca_certs=ca_file)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connacks: queue.Queue[tuple[bool, int]] = queue.Queue()
        self.disconnected = threading.Event()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self.connacks.put((bool(flags.session_present), int(rc.value)))

    def _on_disconnect(self, *args: object) -> None:
        self.disconnected.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, codes: list[ReasonCode], p: Properties
    ) -> None:
        self.subacks.put([int(c.value) for c in codes])

    async def connect(self) -> bool:
        """Connect and start the network thread; returns the CONNACK's session-present flag."""
        self.disconnected.clear()
        await asyncio.to_thread(self.client.connect, self.host, self.port, self.keepalive)
        self.client.loop_start()
        present, code = await asyncio.to_thread(self.connacks.get, True, WAIT)
        assert code == 0, f"CONNACK code {code}"
        return present

    async def subscribe(self, topic_filter: str, qos: int = 0) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        return await asyncio.to_thread(self.subacks.get, True, WAIT)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish and wait until it is sent (QoS 0) or acknowledged (QoS 1, 2)."""
        info = self.client.publish(topic, payload, qos, retain)
        await asyncio.to_thread(info.wait_for_publish, WAIT)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    async def next(self, timeout: float = WAIT) -> Received:
        return await asyncio.to_thread(self.messages.get, True, timeout)

    async def until(self, topic: str, timeout: float = WAIT) -> list[Received]:
        """Every message up to and including the first on ``topic``."""
        seen = []
        while True:
            message = await self.next(timeout)
            seen.append(message)
            if message.topic == topic:
                return seen

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class Raw:
    """A plain socket: send any bytes, read packets back with the codec."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=WAIT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str, **kwargs: object) -> codec.Connack:
        self.send(codec.encode(codec.Connect(client_id, **kwargs)))  # type: ignore[arg-type]
        packet = self.read()
        assert isinstance(packet, codec.Connack), packet
        return packet

    def read(self) -> codec.Packet:
        header = self._exactly(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._exactly(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return codec.decode(header, self._exactly(length))

    def closed_by_peer(self, timeout: float = WAIT) -> bool:
        """Whether the broker closes the socket within ``timeout`` (reading what it still sends)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()
