"""The MQTT codec and topic matching: round trips, every refusal rule, and random bytes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnode.mqtt import codec, topics
from vnode.mqtt.codec import Ack, Bare, Connack, ConnackCode, Connect, Publish, Type, Will

PACKETS: list[codec.Packet] = [
    Connect("dev-1"),
    Connect(
        "dev-2",
        clean_session=False,
        keepalive=30,
        will=Will("$hw/events/device/d/state/update", b'{"state":"offline"}', 1, True),
        username="mapper",
        password=b"s3cret",
    ),
    Connect("old", protocol="MQIsdp", level=3),
    Connack(True, ConnackCode.ACCEPTED),
    Connack(False, ConnackCode.BAD_CREDENTIALS),
    Publish("$hw/events/device/d/twin/update", b"{}", 0),
    Publish("a/b", b"x" * 200, 1, retain=True, dup=True, packet_id=7),
    Publish("a/b", b"", 2, packet_id=65535),
    Ack(Type.PUBACK, 1),
    Ack(Type.PUBREC, 2),
    Ack(Type.PUBREL, 3),
    Ack(Type.PUBCOMP, 4),
    Ack(Type.UNSUBACK, 5),
    codec.Subscribe(9, [("$hw/events/device/+/twin/+", 1), ("#", 0)]),
    codec.Suback(9, [1, 0x80]),
    codec.Unsubscribe(10, ["a/#", "b"]),
    Bare(Type.PINGREQ),
    Bare(Type.PINGRESP),
    Bare(Type.DISCONNECT),
]


async def _read(data: bytes, max_size: int = 1 << 20) -> codec.Packet:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await codec.read_packet(reader, max_size)


@pytest.mark.parametrize("packet", PACKETS, ids=lambda p: type(p).__name__)
async def test_round_trip(packet: codec.Packet) -> None:
    assert await _read(codec.encode(packet)) == packet


async def test_long_remaining_length() -> None:
    packet = Publish("t", b"y" * 200_000, 0)
    data = codec.encode(packet)
    assert data[1:4] == bytes((0xC3 | 0x80, 0x9A | 0x80, 0x0C))  # 200004 in three bytes
    assert await _read(data) == packet


def _connect(
    flags: int, payload: bytes = b"\x00\x01c", name: bytes = b"\x00\x04MQTT", level: int = 4
) -> bytes:
    body = name + bytes((level, flags)) + b"\x00\x3c" + payload
    return bytes((0x10, len(body))) + body


MALFORMED = {
    "reserved type 0": b"\x00\x00",
    "reserved type 15": b"\xf0\x00",
    "PUBREL flags 0": b"\x60\x02\x00\x01",
    "SUBSCRIBE flags 0": b"\x80\x06\x00\x01\x00\x01a\x00",
    "PINGREQ flags": b"\xc1\x00",
    "PINGREQ with body": b"\xc0\x01\x00",
    "five-byte length": b"\x30\xff\xff\xff\xff\x01",
    "QoS 3": b"\x36\x05\x00\x01a\x00\x01",
    "QoS 0 with DUP": b"\x38\x03\x00\x01a",
    "wildcard topic name": b"\x30\x03\x00\x01+",
    "hash in topic name": b"\x30\x05\x00\x03a/#",
    "empty topic name": b"\x30\x02\x00\x00",
    "bad UTF-8": b"\x30\x04\x00\x02\xc3\x28",
    "surrogate UTF-8": b"\x30\x05\x00\x03\xed\xa0\x80",
    "U+0000 in topic": b"\x30\x05\x00\x03a\x00b",
    "packet id 0": b"\x32\x05\x00\x01a\x00\x00",
    "PUBACK id 0": b"\x40\x02\x00\x00",
    "PUBACK trailing": b"\x40\x03\x00\x01\x00",
    "string past end": b"\x30\x03\x00\x09a",
    "SUBSCRIBE no filter": b"\x82\x02\x00\x01",
    "SUBSCRIBE QoS 3": b"\x82\x06\x00\x01\x00\x01a\x03",
    "SUBSCRIBE reserved bits": b"\x82\x06\x00\x01\x00\x01a\x41",
    "SUBSCRIBE missing QoS": b"\x82\x05\x00\x01\x00\x01a",
    "UNSUBSCRIBE no filter": b"\xa2\x02\x00\x01",
    "CONNECT reserved flag": _connect(0x03),
    "CONNECT will QoS without will": _connect(0x0A),
    "CONNECT will retain without will": _connect(0x22),
    "CONNECT will QoS 3": _connect(0x1E, b"\x00\x01c\x00\x01t\x00\x00"),
    "CONNECT password without user": _connect(0x42, b"\x00\x01c\x00\x01p"),
    "CONNECT bad protocol name": _connect(0x02, name=b"\x00\x04MQTX"),
    "CONNECT wildcard will topic": _connect(0x06, b"\x00\x01c\x00\x01#\x00\x00"),
    "CONNECT truncated": bytes((0x10, len(_connect(0x02)) - 3)) + _connect(0x02)[2:-1],
    "CONNACK reserved": b"\x20\x02\x02\x00",
    "CONNACK code 6": b"\x20\x02\x00\x06",
    "SUBACK code 3": b"\x90\x03\x00\x01\x03",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_refused(data: bytes) -> None:
    with pytest.raises(codec.MalformedPacket):
        await _read(data)


async def test_unacceptable_level_is_its_own_error() -> None:
    with pytest.raises(codec.UnacceptableProtocol):
        await _read(_connect(0x02, level=5))
    with pytest.raises(codec.UnacceptableProtocol):
        await _read(_connect(0x02, name=b"\x00\x06MQIsdp", level=4))


async def test_oversize_refused_before_reading_body() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\x30\xff\xff\x7f")  # announces 2 MiB and sends nothing more
    with pytest.raises(codec.MalformedPacket, match="exceeds"):
        await codec.read_packet(reader, 1 << 20)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64))
def test_random_bytes_only_malformed(header: int, body: bytes) -> None:
    """Whatever arrives, decode returns a packet or raises MalformedPacket, nothing else."""
    try:
        packet = codec.decode(header, body)
    except codec.MalformedPacket:
        return
    assert codec.decode(header, body) == packet


MATCHES = [
    ("a/b", "a/b", True),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("+/+", "a/b", True),
    ("+", "/a", False),
    ("+/+", "/a", True),
    ("/+", "/a", True),
    ("a/+/c", "a//c", True),
    ("#", "$hw/events/device/d/twin/update", False),
    ("+/events/#", "$hw/events/device/d", False),
    ("$hw/#", "$hw/events/device/d", True),
    ("$hw/+/device/+/twin/+", "$hw/events/device/d/twin/get", True),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("#", "$SYS/broker/uptime", False),
    ("a/b", "a/B", False),
]


@pytest.mark.parametrize(("f", "t", "expected"), MATCHES)
def test_matches(f: str, t: str, expected: bool) -> None:
    assert topics.matches(f, t) is expected
    index: topics.FilterIndex[str] = topics.FilterIndex()
    index.add(f, "k", 1)
    assert (list(index.match(t)) == [("k", 1)]) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "+a", "##"])
def test_bad_filters(bad: str) -> None:
    with pytest.raises(topics.BadTopic):
        topics.check_filter(bad)


def test_index_remove() -> None:
    index: topics.FilterIndex[str] = topics.FilterIndex()
    index.add("a/+", "x", 0)
    index.add("a/b", "y", 1)
    index.add("a/+", "y", 1)
    assert sorted(index.match("a/b")) == [("x", 0), ("y", 1), ("y", 1)]
    index.remove("a/+", "y")
    index.remove("a/b", "y")
    assert list(index.match("a/b")) == [("x", 0)]
    assert len(index) == 1
