"""MQTT 3.1.1 packets: reading them off a stream and writing them, refusing anything malformed.

Every rule of the specification a receiver must check is checked here ("MQTT-x.y.z-n" comments
name the ones that are easy to miss), so the broker sees only well-formed packets. A violation
raises ``MalformedPacket``; the broker then closes that one connection, as the specification
orders, and nothing else is affected. A CONNECT asking for a protocol level this broker does not
speak raises ``UnacceptableProtocol`` instead: it is answered with CONNACK code 1 before closing.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from enum import IntEnum

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable-length integer
PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3)}  # 3.1.1, and 3.1 clients


class MalformedPacket(Exception):
    """The bytes are not a packet this side may receive; the connection must be closed."""


class UnacceptableProtocol(MalformedPacket):
    """A CONNECT for a protocol name or level not served (CONNACK return code 1)."""


class Type(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnackCode(IntEnum):
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_CREDENTIALS = 4
    NOT_AUTHORIZED = 5


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol: str = "MQTT"
    level: int = 4


@dataclass(frozen=True)
class Connack:
    session_present: bool
    code: ConnackCode


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True)
class Ack:
    """PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK: a type and a packet identifier."""

    type: Type
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    topics: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Suback:
    packet_id: int
    codes: list[int] = field(default_factory=list)  # granted QoS, or 0x80 for a failure


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    filters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bare:
    """PINGREQ, PINGRESP, DISCONNECT: a fixed header and nothing else."""

    type: Type


Packet = Connect | Connack | Publish | Ack | Subscribe | Suback | Unsubscribe | Bare

# Fixed-header flags each type must carry (MQTT-2.2.2-1, -2); PUBLISH's are checked separately.
REQUIRED_FLAGS: dict[Type, int] = {Type(t): 0 for t in Type if t is not Type.PUBLISH} | {
    Type.PUBREL: 0b0010,
    Type.SUBSCRIBE: 0b0010,
    Type.UNSUBSCRIBE: 0b0010,
}
ACK_TYPES = (Type.PUBACK, Type.PUBREC, Type.PUBREL, Type.PUBCOMP, Type.UNSUBACK)
BARE_TYPES = (Type.PINGREQ, Type.PINGRESP, Type.DISCONNECT)


# -- reading ---------------------------------------------------------------------------------


async def read_packet(reader: asyncio.StreamReader, max_size: int) -> Packet:
    """The next packet; ``asyncio.IncompleteReadError`` at end of stream, ``MalformedPacket`` for
    bad bytes or a packet whose remaining length exceeds ``max_size`` (read no further then)."""
    header, byte = await reader.readexactly(2)  # every packet has a first length byte
    length = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 21:
            raise MalformedPacket("remaining length longer than four bytes")
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
    if length > max_size:
        raise MalformedPacket(f"packet of {length} bytes exceeds the limit of {max_size}")
    body = await reader.readexactly(length) if length else b""
    return decode(header, body)


class _Reader:
    """A cursor over a packet body; every read checks the bytes are there."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.body):
            raise MalformedPacket("packet shorter than its contents")
        chunk = self.body[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")  # refuses surrogates and overlong forms (MQTT-1.5.3-1)
        except UnicodeDecodeError:
            raise MalformedPacket("string is not well-formed UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")  # MQTT-1.5.3-2
        return text

    def packet_id(self) -> int:
        value = self.u16()
        if value == 0:
            raise MalformedPacket("packet identifier 0")  # MQTT-2.3.1-1
        return value

    def rest(self) -> bytes:
        chunk = self.body[self.pos :]
        self.pos = len(self.body)
        return chunk

    @property
    def remaining(self) -> int:
        return len(self.body) - self.pos

    def done(self) -> None:
        if self.pos != len(self.body):
            raise MalformedPacket(f"{len(self.body) - self.pos} unexpected trailing byte(s)")


def decode(header: int, body: bytes) -> Packet:
    """One packet from its first byte and its body."""
    try:
        kind = Type(header >> 4)
    except ValueError:
        raise MalformedPacket(f"reserved packet type {header >> 4}") from None
    flags = header & 0x0F
    if kind is not Type.PUBLISH and flags != REQUIRED_FLAGS[kind]:
        raise MalformedPacket(f"{kind.name} with fixed-header flags {flags:04b}")
    r = _Reader(body)
    packet: Packet
    if kind is Type.PUBLISH:
        packet = _publish(flags, r)
    elif kind is Type.CONNECT:
        packet = _connect(r)
    elif kind is Type.CONNACK:
        ack_flags, code = r.byte(), r.byte()
        if ack_flags & 0xFE:
            raise MalformedPacket("CONNACK reserved flags set")
        try:
            packet = Connack(bool(ack_flags & 1), ConnackCode(code))
        except ValueError:
            raise MalformedPacket(f"CONNACK return code {code}") from None
    elif kind in ACK_TYPES:
        packet = Ack(kind, r.packet_id())
    elif kind is Type.SUBSCRIBE:
        packet = _subscribe(r)
    elif kind is Type.SUBACK:
        pid = r.packet_id()
        codes = list(r.rest())
        if not codes or any(c not in (0, 1, 2, 0x80) for c in codes):
            raise MalformedPacket("SUBACK return codes")
        packet = Suback(pid, codes)
    elif kind is Type.UNSUBSCRIBE:
        pid = r.packet_id()
        filters = []
        while r.remaining:
            filters.append(r.string())
        if not filters:
            raise MalformedPacket("UNSUBSCRIBE without a topic filter")  # MQTT-3.10.3-2
        packet = Unsubscribe(pid, filters)
    else:
        packet = Bare(kind)
    r.done()
    return packet


def _publish(flags: int, r: _Reader) -> Publish:
    qos = (flags >> 1) & 3
    dup = bool(flags & 0b1000)
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")  # MQTT-3.3.1-4
    if qos == 0 and dup:
        raise MalformedPacket("PUBLISH QoS 0 with DUP set")  # MQTT-3.3.1-2
    topic = r.string()
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket(f"PUBLISH topic name {topic!r}")  # MQTT-3.3.2-2, 4.7.3-1
    pid = r.packet_id() if qos else None
    return Publish(topic, r.rest(), qos, bool(flags & 1), dup, pid)


def _connect(r: _Reader) -> Connect:
    protocol = r.string()
    level = r.byte()
    if protocol not in ("MQTT", "MQIsdp"):
        raise MalformedPacket(f"protocol name {protocol!r}")  # MQTT-3.1.2-1
    if (protocol, level) not in PROTOCOLS:
        raise UnacceptableProtocol(f"protocol {protocol!r} level {level}")  # MQTT-3.1.2-2
    flags = r.byte()
    if flags & 1:
        raise MalformedPacket("CONNECT reserved flag set")  # MQTT-3.1.2-3
    will_flag, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
    has_password, has_username = bool(flags & 0x40), bool(flags & 0x80)
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")  # MQTT-3.1.2-14
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain without a will")  # MQTT-3.1.2-13, -15
    if has_password and not has_username:
        raise MalformedPacket("password without a user name")  # MQTT-3.1.2-22
    keepalive = r.u16()
    client_id = r.string()
    will = None
    if will_flag:
        topic = r.string()
        if not topic or "+" in topic or "#" in topic:
            raise MalformedPacket(f"will topic {topic!r}")
        will = Will(topic, r.binary(), will_qos, will_retain)
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    return Connect(client_id, bool(flags & 0x02), keepalive, will, username, password, protocol, level)


def _subscribe(r: _Reader) -> Subscribe:
    pid = r.packet_id()
    topics = []
    while r.remaining:
        topic = r.string()
        qos = r.byte()
        if qos & 0xFC or qos == 3:
            raise MalformedPacket(f"SUBSCRIBE requested QoS byte {qos:#04x}")  # MQTT-3.8.3-4
        topics.append((topic, qos))
    if not topics:
        raise MalformedPacket("SUBSCRIBE without a topic filter")  # MQTT-3.8.3-3
    return Subscribe(pid, topics)


# -- writing ---------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(f"packet of {n} bytes is too large for MQTT")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _bin(raw)


def _bin(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _frame(header: int, body: bytes) -> bytes:
    return bytes((header,)) + _length(len(body)) + body


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None
) -> bytes:
    """A PUBLISH; the broker's hot path, so it skips building a ``Publish`` first."""
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = _str(topic) + (struct.pack("!H", packet_id) if qos and packet_id is not None else b"") + payload
    return _frame(header, body)


def encode(packet: Packet) -> bytes:
    """The bytes of ``packet`` (both directions: the tests and benchmarks speak as clients too)."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic, packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id
        )
    if isinstance(packet, Ack):
        return _frame((packet.type << 4) | REQUIRED_FLAGS[packet.type], struct.pack("!H", packet.packet_id))
    if isinstance(packet, Bare):
        return _frame(packet.type << 4, b"")
    if isinstance(packet, Connack):
        return _frame(Type.CONNACK << 4, bytes((int(packet.session_present), packet.code)))
    if isinstance(packet, Suback):
        return _frame(Type.SUBACK << 4, struct.pack("!H", packet.packet_id) + bytes(packet.codes))
    if isinstance(packet, Subscribe):
        body = struct.pack("!H", packet.packet_id) + b"".join(_str(t) + bytes((q,)) for t, q in packet.topics)
        return _frame((Type.SUBSCRIBE << 4) | 0b0010, body)
    if isinstance(packet, Unsubscribe):
        body = struct.pack("!H", packet.packet_id) + b"".join(_str(t) for t in packet.filters)
        return _frame((Type.UNSUBSCRIBE << 4) | 0b0010, body)
    return _frame(Type.CONNECT << 4, _connect_body(packet))


def _connect_body(c: Connect) -> bytes:
    flags = 0x02 if c.clean_session else 0
    payload = _str(c.client_id)
    if c.will is not None:
        flags |= 0x04 | (c.will.qos << 3) | (0x20 if c.will.retain else 0)
        payload += _str(c.will.topic) + _bin(c.will.payload)
    if c.username is not None:
        flags |= 0x80
        payload += _str(c.username)
    if c.password is not None:
        flags |= 0x40
        payload += _bin(c.password)
    return _str(c.protocol) + bytes((c.level, flags)) + struct.pack("!H", c.keepalive) + payload
