"""MQTT conformance: one suite run against vnode's broker and against a real mosquitto.

Real clients only: paho-mqtt, the mosquitto_pub/mosquitto_sub tools, and a raw socket for what
no client library sends (garbage, a socket dropped without DISCONNECT). Absence is shown without
sleeping: after the message that must not arrive, the same publisher sends a sentinel that the
same subscriber does receive, and the sentinel must come first (MQTT keeps one publisher's order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.mosquitto import Mosquitto
from integration.mqttclients import Paho, Raw
from integration.node import VnodeProcess, free_port, wait_for
from vnode.mqtt import codec
from vnode.mqtt.broker import Broker
from vnode.security.tls import ensure_serving_pair
from vnode.store import Store


@dataclass
class Target:
    name: str
    host: str
    port: int
    broker: Broker | None  # vnode's, for its counters; None for mosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    instance = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(params=["vnode", "mosquitto"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "mosquitto":
        m: Mosquitto = request.getfixturevalue("mosquitto")
        yield Target("mosquitto", m.host, m.port, None)
        return
    broker = Broker(queue_size=100)
    port = await broker.start("127.0.0.1", 0)
    try:
        yield Target("vnode", "127.0.0.1", port, broker)
    finally:
        await broker.close()
        assert not broker._tasks, "connection tasks left after close"


@pytest.fixture
def ids(request: pytest.FixtureRequest) -> str:
    """A prefix unique to this test run, for client ids and topics on the shared mosquitto."""
    return f"t{os.getpid()}-{random.randrange(1 << 30)}"


@pytest.fixture
async def clients() -> AsyncIterator[list[Paho]]:
    made: list[Paho] = []
    try:
        yield made
    finally:
        for c in made:
            await c.close()


def client(target: Target, made: list[Paho], client_id: str, **kwargs: object) -> Paho:
    c = Paho(target.host, target.port, client_id, **kwargs)  # type: ignore[arg-type]
    made.append(c)
    return c


async def test_dollar_topics_reach_only_filters_that_name_them(
    target: Target, clients: list[Paho], ids: str
) -> None:
    """KubeEdge's ``$hw`` topics: a client may publish them; exact and ``$hw/+/...`` filters get
    them, ``#`` and ``+/...`` do not; the publisher stays connected and is heard next time."""
    topic = f"$hw/events/device/{ids}/twin/update"
    exact, plus_after, hash_all, plus_first = (
        client(target, clients, f"{ids}-{n}") for n in ("exact", "plus", "hash", "plusfirst")
    )
    for c, f in (
        (exact, topic),
        (plus_after, f"$hw/+/device/{ids}/twin/update"),
        (hash_all, "#"),
        (plus_first, "+/events/#"),
    ):
        await c.connect()
        assert await c.subscribe(f, 1) == [1]
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    await pub.publish(topic, b"one", qos=1)
    sentinel = f"{ids}/events/sentinel"
    await pub.publish(sentinel, b"s", qos=1)
    assert (await exact.next()).payload == b"one"
    assert (await plus_after.next()).payload == b"one"
    # The sentinel is the first message the wildcard subscribers see of this publisher's.
    assert [m.topic for m in await hash_all.until(sentinel) if ids in m.topic] == [sentinel]
    assert [m.topic for m in await plus_first.until(sentinel) if ids in m.topic] == [sentinel]
    await pub.publish(topic, b"two", qos=1)
    assert (await exact.next()).payload == b"two"
    assert not pub.disconnected.is_set()


async def test_sys_publish_dropped_client_kept(target: Target, clients: list[Paho], ids: str) -> None:
    sub = client(target, clients, f"{ids}-sub")
    await sub.connect()
    await sub.subscribe(f"$SYS/{ids}/x", 0)
    await sub.subscribe(f"{ids}/sentinel", 0)
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    await pub.publish(f"$SYS/{ids}/x", b"forged", qos=1)
    await pub.publish(f"{ids}/sentinel", b"s", qos=1)
    assert [m.topic for m in await sub.until(f"{ids}/sentinel")] == [f"{ids}/sentinel"]
    assert not pub.disconnected.is_set()


async def test_qos1_redelivered_to_persistent_session(target: Target, clients: list[Paho], ids: str) -> None:
    sub = client(target, clients, f"{ids}-sub", clean_session=False)
    assert await sub.connect() is False
    assert await sub.subscribe(f"{ids}/q", 1) == [1]
    await sub.close()
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    for i in range(5):
        await pub.publish(f"{ids}/q", f"m{i}".encode(), qos=1)  # each PUBACKed while sub is away
    back = client(target, clients, f"{ids}-sub", clean_session=False)
    assert await back.connect() is True
    got = [await back.next() for _ in range(5)]
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert {m.qos for m in got} == {1}


async def test_clean_session_forgets(target: Target, clients: list[Paho], ids: str) -> None:
    sub = client(target, clients, f"{ids}-sub", clean_session=False)
    await sub.connect()
    await sub.subscribe(f"{ids}/q", 1)
    await sub.close()
    clean = client(target, clients, f"{ids}-sub", clean_session=True)
    assert await clean.connect() is False


async def test_retained_message_to_late_subscriber(target: Target, clients: list[Paho], ids: str) -> None:
    early = client(target, clients, f"{ids}-early")
    await early.connect()
    await early.subscribe(f"{ids}/r", 1)
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    await pub.publish(f"{ids}/r", b"kept", qos=1, retain=True)
    live = await early.next()  # an established subscription gets it with RETAIN 0 (MQTT-3.3.1-9)
    assert (live.payload, live.retain) == (b"kept", False)
    await pub.publish(f"{ids}/live", b"live", qos=1, retain=False)
    late = client(target, clients, f"{ids}-late")
    await late.connect()
    await late.subscribe(f"{ids}/#", 1)
    first = await late.next()
    assert (first.topic, first.payload, first.retain) == (f"{ids}/r", b"kept", True)
    await pub.publish(f"{ids}/r", b"", qos=1, retain=True)  # clears it
    later = client(target, clients, f"{ids}-later")
    await later.connect()
    await later.subscribe(f"{ids}/r", 1)
    await later.subscribe(f"{ids}/sentinel", 1)
    await pub.publish(f"{ids}/sentinel", b"s", qos=1)
    assert [m.topic for m in await later.until(f"{ids}/sentinel")] == [f"{ids}/sentinel"]


async def test_will_on_dropped_client_not_on_disconnect(
    target: Target, clients: list[Paho], ids: str
) -> None:
    watcher = client(target, clients, f"{ids}-watch")
    await watcher.connect()
    await watcher.subscribe(f"{ids}/will/#", 1)
    polite = client(target, clients, f"{ids}-polite", will=(f"{ids}/will/polite", b"gone", 1, False))
    await polite.connect()
    await polite.close()  # DISCONNECT: no will
    raw = Raw(target.host, target.port)
    will = codec.Will(f"{ids}/will/dropped", b"dead", 1, False)
    ack = await asyncio.to_thread(raw.connect, f"{ids}-dropped", will=will, keepalive=60)
    assert ack.code == codec.ConnackCode.ACCEPTED
    raw.close()  # no DISCONNECT: the will goes out
    message = await watcher.next()
    assert (message.topic, message.payload) == (f"{ids}/will/dropped", b"dead")


async def test_keepalive_expiry_closes_and_sends_will(target: Target, clients: list[Paho], ids: str) -> None:
    watcher = client(target, clients, f"{ids}-watch")
    await watcher.connect()
    await watcher.subscribe(f"{ids}/will", 1)
    raw = Raw(target.host, target.port)
    will = codec.Will(f"{ids}/will", b"silent", 0, False)
    ack = await asyncio.to_thread(raw.connect, f"{ids}-silent", will=will, keepalive=1)
    assert ack.code == codec.ConnackCode.ACCEPTED
    assert await asyncio.to_thread(raw.closed_by_peer, 10.0)  # 1.5 x 1 s, well within 10 s
    assert (await watcher.next()).payload == b"silent"
    raw.close()


async def test_second_connect_with_same_id_takes_over(target: Target, clients: list[Paho], ids: str) -> None:
    first = Raw(target.host, target.port)
    await asyncio.to_thread(first.connect, f"{ids}-same", keepalive=60)
    second = client(target, clients, f"{ids}-same")
    await second.connect()
    assert await asyncio.to_thread(first.closed_by_peer, 10.0)
    first.close()
    await second.subscribe(f"{ids}/x", 0)
    await second.publish(f"{ids}/x", b"still here", qos=1)
    assert (await second.next()).payload == b"still here"


def _garbage(rng: random.Random) -> bytes:
    """Random bytes, or a valid packet cut short or with a byte flipped."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    packet = codec.encode(codec.Connect(f"g{rng.randrange(1000)}", keepalive=rng.randrange(60)))
    packet += codec.encode(codec.Publish("a/b", rng.randbytes(rng.randrange(16)), 1, packet_id=1))
    if kind == 1:
        return packet[: rng.randrange(1, len(packet))]
    data = bytearray(packet)
    for _ in range(rng.randrange(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


async def test_garbage_costs_only_its_sender(target: Target, clients: list[Paho], ids: str) -> None:
    """Malformed packets close their own connection; a pair of clients keeps talking through it."""
    sub = client(target, clients, f"{ids}-sub")
    await sub.connect()
    await sub.subscribe(f"{ids}/ok", 1)
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    rng = random.Random(17)
    bad = [
        b"\x10\xff\xff\xff\xff\x7f",  # remaining length longer than four bytes
        b"\xf0\x00",  # reserved packet type 15
        b"\x30\x05\x00\x01+\x00x",  # PUBLISH before CONNECT
        codec.encode(codec.Connect("c")) + b"\x82\x03\x00\x01\x00",  # SUBSCRIBE without filter
        codec.encode(codec.Connect("c")) + b"\x36\x05\x00\x01a\x00\x01",  # QoS 3
        codec.encode(codec.Connect("c")) + b"\x30\x04\x00\x02\xc3\x28",  # invalid UTF-8 topic
    ] + [_garbage(rng) for _ in range(200)]

    def storm() -> int:
        closed = 0
        for data in bad:
            raw = Raw(target.host, target.port)
            try:
                raw.send(data)
                raw.sock.shutdown(1)  # a truncated packet must not wait for the keepalive
                closed += raw.closed_by_peer(10.0)
            except OSError:  # closed by the broker before we were done sending
                closed += 1
            finally:
                raw.close()
        return closed

    for i in range(3):
        assert await asyncio.to_thread(storm) == len(bad)
        await pub.publish(f"{ids}/ok", f"{i}".encode(), qos=1)
        assert (await sub.next()).payload == f"{i}".encode()
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
    if target.broker is not None:
        assert target.broker.stats.malformed > 0
        assert target.broker.connected == 2


async def test_mosquitto_tools(target: Target, ids: str) -> None:
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", target.host, "-p", str(target.port), "-t", f"$hw/{ids}/#", "-C", "1", "-v",
        "-q", "1", "-i", f"{ids}-sub",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        # mosquitto_sub -C 1 exits after one message: publish until it is subscribed and gets one.
        async with asyncio.timeout(20):
            while sub.returncode is None:
                pub = await asyncio.create_subprocess_exec(
                    "mosquitto_pub", "-h", target.host, "-p", str(target.port), "-t", f"$hw/{ids}/t",
                    "-m", "hello", "-q", "1",
                )  # fmt: skip
                assert await pub.wait() == 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await sub.wait()
        out, _ = await sub.communicate()
        assert out.decode().strip() == f"$hw/{ids}/t hello"
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()


async def away_then_published(target: Target, clients: list[Paho], ids: str, payloads: list[bytes]) -> Paho:
    """A persistent session subscribed to ``<ids>/q`` goes away; then ``payloads`` are published
    to it at QoS 1. Returns the (connected) publisher."""
    sub = client(target, clients, f"{ids}-sub", clean_session=False)
    await sub.connect()
    await sub.subscribe(f"{ids}/q", 1)
    await sub.close()
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    for payload in payloads:
        await pub.publish(f"{ids}/q", payload, qos=1)
    return pub


async def test_queue_overflow_drops_oldest_and_counts(clients: list[Paho], ids: str) -> None:
    """vnode's bound (mqttSessionQueueSize): an offline session keeps the newest messages."""
    broker = Broker(queue_size=10)
    port = await broker.start("127.0.0.1", 0)
    target = Target("vnode", "127.0.0.1", port, broker)
    try:
        await away_then_published(target, clients, ids, [f"{i}".encode() for i in range(15)])
        assert broker.stats.dropped == 5
        back = client(target, clients, f"{ids}-sub", clean_session=False)
        await back.connect()
        got = [(await back.next()).payload for _ in range(10)]
        assert got == [f"{i}".encode() for i in range(5, 15)]
    finally:
        for c in clients:
            await c.close()
        await broker.close()


async def test_vnode_serves_its_broker_when_enabled(tmp_path: Path, clients: list[Paho], ids: str) -> None:
    """``vnode run --event-bus``: the internal broker on the configured address, closed on SIGTERM."""
    port = free_port()
    node = VnodeProcess(
        tmp_path,
        f"unix://{tmp_path}/absent.sock",  # no containerd needed for MQTT
        extra_args=["--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}"],
    )
    await node.start()
    try:
        target = Target("vnode", "127.0.0.1", port, None)
        sub = client(target, clients, f"{ids}-sub")
        await sub.connect()
        await sub.subscribe("$hw/events/device/+/twin/+", 1)
        pub = client(target, clients, f"{ids}-pub")
        await pub.connect()
        await pub.publish(f"$hw/events/device/{ids}/twin/x", b"{}", qos=1)
        assert (await sub.next()).topic == f"$hw/events/device/{ids}/twin/x"
        # The device twins are wired to it: an unknown device's twin/get is answered 404.
        await sub.subscribe("$hw/events/device/+/twin/get/result", 1)
        await pub.publish(f"$hw/events/device/{ids}/twin/get", b'{"event_id":"g"}', qos=1)
        seen = await sub.until(f"$hw/events/device/{ids}/twin/get/result")
        assert json.loads(seen[-1].payload)["code"] == 404
        code, body = await node.get("/metrics")
        assert code == 200
        metrics = body.decode()
        assert "vnode_mqtt_clients_connected 2.0" in metrics
        assert "vnode_device_twins_errors_total 1.0" in metrics
        assert "vnode_mqtt_received_total" in metrics
    finally:
        assert await node.terminate() == 0
    assert "MQTT broker (internal) serving on 127.0.0.1" in node.log_tail(200)


async def test_twin_get_after_sigkill_answers_from_the_store(
    tmp_path: Path, clients: list[Paho], ids: str
) -> None:
    """A mapper's report survives a SIGKILL of vnode: twin/get after the restart answers it."""
    port = free_port()
    args = ["--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}"]
    node = VnodeProcess(tmp_path, f"unix://{tmp_path}/absent.sock", extra_args=args)
    target = Target("vnode", "127.0.0.1", port, None)
    await node.start()
    assert await node.terminate() == 0
    # Register the device as the Device watch does (the store's schema exists after a first start).
    store = await Store.open(node.root_dir / "store")
    try:
        device = {
            "id": "default/t",
            "name": "t",
            "twin": {"v": {"optional": False, "metadata": {"type": "int"}}},
        }
        await store.put("device_twins", "default/t", device)
    finally:
        await store.close()
    await node.start()
    try:
        mapper = client(target, clients, f"{ids}-mapper")
        await mapper.connect()
        await mapper.subscribe("$hw/events/device/default/t/twin/+/result", 1)
        for value in ("1", "2", "3"):
            body = {"event_id": value, "twin": {"v": {"actual": {"value": value}}}}
            await mapper.publish("$hw/events/device/default/t/twin/update", json.dumps(body).encode(), qos=1)
            result = json.loads((await mapper.next()).payload)
            assert result["event_id"] == value and "code" not in result
        await node.kill()
        await mapper.close()
        await node.start()
        again = client(target, clients, f"{ids}-mapper2")
        await again.connect()
        await again.subscribe("$hw/events/device/default/t/twin/get/result", 1)
        await again.publish("$hw/events/device/default/t/twin/get", b'{"event_id":"g"}', qos=1)
        twin = json.loads((await again.next()).payload)["twin"]["v"]
        assert twin["actual"]["value"] == "3"
    finally:
        assert await node.terminate() == 0


async def test_vnode_refuses_a_taken_broker_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = VnodeProcess(
            tmp_path,
            f"unix://{tmp_path}/absent.sock",
            extra_args=["--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}"],
        )
        await node.start(wait=False)
        assert node.proc is not None
        assert await node.proc.wait() == 5
    assert "eventBus.mqttServerInternal: MQTT broker: cannot listen on 127.0.0.1" in node.log_tail()


def test_mqtt_not_imported_when_disabled() -> None:
    code = (
        "import sys, vnode.cli, vnode.app.running, vnode.app.wiring;"
        "assert not [m for m in sys.modules if m.startswith('vnode.mqtt')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_fuzz_ten_thousand_malformed_packets(clients: list[Paho], ids: str) -> None:
    """10,000 random and truncated packets at vnode's broker, 50 connections at a time: each is
    closed, none crashes the broker, no task or file descriptor is left, a client pair keeps going."""
    broker = Broker()
    port = await broker.start("127.0.0.1", 0)
    target = Target("vnode", "127.0.0.1", port, broker)
    try:
        sub = client(target, clients, f"{ids}-sub")
        await sub.connect()
        await sub.subscribe(f"{ids}/ok", 1)
        pub = client(target, clients, f"{ids}-pub")
        await pub.connect()
        fds_before = len(os.listdir("/proc/self/fd"))
        rng = random.Random(1017)
        payloads = [_garbage(rng) for _ in range(10_000)]
        closed = 0
        gate = asyncio.Semaphore(50)

        async def one(data: bytes) -> None:
            nonlocal closed
            async with gate:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(data)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                        writer.write_eof()
                    async with asyncio.timeout(10):
                        with contextlib.suppress(ConnectionError):
                            while await reader.read(65536):
                                pass
                    closed += 1
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()

        for start in range(0, len(payloads), 2000):
            await asyncio.gather(*(one(d) for d in payloads[start : start + 2000]))
            await pub.publish(f"{ids}/ok", f"{start}".encode(), qos=1)
            assert (await sub.next()).payload == f"{start}".encode()
        assert closed == len(payloads)
        assert broker.stats.malformed > 3000  # the rest: truncated, closed at end of stream
        assert broker.connected == 2 and not sub.disconnected.is_set() and not pub.disconnected.is_set()

        async def settled() -> bool:
            return len(broker._tasks) == 2 and len(os.listdir("/proc/self/fd")) <= fds_before

        await wait_for(settled, timeout=10, what="connection tasks and fds back to the client pair's")
    finally:
        for c in clients:
            await c.close()
        await broker.close()
    assert not broker._tasks


async def test_persistent_sessions_and_retained_survive_a_vnode_restart(
    tmp_path: Path, clients: list[Paho], ids: str
) -> None:
    """vnode run restarted (SIGTERM): a persistent session's subscription and its QoS 1 messages
    published while it was away, and the retained messages, are still there."""
    port = free_port()
    args = ["--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}"]
    node = VnodeProcess(tmp_path, f"unix://{tmp_path}/absent.sock", extra_args=args)
    target = Target("vnode", "127.0.0.1", port, None)
    await node.start()
    try:
        pub = await away_then_published(target, clients, ids, [f"m{i}".encode() for i in range(3)])
        await pub.publish(f"{ids}/kept", b"retained", qos=1, retain=True)
        await pub.close()
        assert await node.terminate() == 0
        await node.start()
        back = client(target, clients, f"{ids}-sub", clean_session=False)
        assert await back.connect() is True  # session present
        assert [(await back.next()).payload for _ in range(3)] == [b"m0", b"m1", b"m2"]
        await back.publish(f"{ids}/q", b"after", qos=1)  # the subscription itself came back too
        assert (await back.next()).payload == b"after"
        late = client(target, clients, f"{ids}-late")
        await late.connect()
        await late.subscribe(f"{ids}/kept", 1)
        first = await late.next()
        assert (first.payload, first.retain) == (b"retained", True)
    finally:
        if node.proc is not None and node.proc.returncode is None:
            assert await node.terminate() == 0


async def test_qos2_publish_completed_and_delivered_once(
    target: Target, clients: list[Paho], ids: str
) -> None:
    """QoS 2 from a publisher is completed (PUBREC/PUBREL/PUBCOMP); vnode grants a QoS 2
    subscription QoS 1 (mosquitto grants 2); either way the subscriber gets the message once."""
    sub = client(target, clients, f"{ids}-sub")
    await sub.connect()
    granted = await sub.subscribe(f"{ids}/two", 2)
    assert granted == ([1] if target.name == "vnode" else [2])
    await sub.subscribe(f"{ids}/sentinel", 0)
    pub = client(target, clients, f"{ids}-pub")
    await pub.connect()
    await pub.publish(f"{ids}/two", b"exactly", qos=2)  # returns at PUBCOMP
    await pub.publish(f"{ids}/sentinel", b"s", qos=1)
    seen = [await sub.next(), await sub.next()]  # paho hands a QoS 2 message over at PUBREL
    await pub.publish(f"{ids}/sentinel", b"s2", qos=1)  # nothing more of "two" before this one
    seen += await sub.until(f"{ids}/sentinel")
    twos = [(m.payload, m.qos) for m in seen if m.topic == f"{ids}/two"]
    assert twos == [(b"exactly", granted[0])]


async def test_credentials_required_when_configured(ids: str) -> None:
    broker = Broker(credentials=("mapper", "s3cret"))
    port = await broker.start("127.0.0.1", 0)
    try:
        for user, password, code in (
            (None, None, codec.ConnackCode.BAD_CREDENTIALS),
            ("mapper", b"wrong", codec.ConnackCode.BAD_CREDENTIALS),
            ("mapper", b"s3cret", codec.ConnackCode.ACCEPTED),
        ):
            raw = Raw("127.0.0.1", port)
            try:
                ack = await asyncio.to_thread(raw.connect, f"{ids}-c", username=user, password=password)
                assert ack.code == code
            finally:
                raw.close()
    finally:
        await broker.close()


async def test_tls_and_credentials_through_vnode_run(tmp_path: Path, clients: list[Paho], ids: str) -> None:
    """ssl:// with the tlsMqtt* files and a user name: paho over TLS with the credentials gets
    through; a plain-TCP client does not."""
    cert, key = tmp_path / "mqtt.crt", tmp_path / "mqtt.key"
    await asyncio.to_thread(ensure_serving_pair, cert, key, hostnames=["localhost"], ips=["127.0.0.1"])
    port = free_port()
    args = [
        "--event-bus",
        f"--mqtt-server-internal=ssl://127.0.0.1:{port}",
        f"--mqtt-tls-cert-file={cert}",
        f"--mqtt-tls-private-key-file={key}",
        "--mqtt-username=mapper",
        "--mqtt-password=s3cret",
    ]
    node = VnodeProcess(tmp_path / "node", f"unix://{tmp_path}/absent.sock", extra_args=args)
    await node.start()
    try:
        target = Target("vnode", "127.0.0.1", port, None)
        secure = client(
            target, clients, f"{ids}-tls", ca_file=str(cert), username="mapper", password="s3cret"
        )
        await secure.connect()
        await secure.subscribe(f"{ids}/t", 1)
        await secure.publish(f"{ids}/t", b"private", qos=1)
        assert (await secure.next()).payload == b"private"
        plain = Raw("127.0.0.1", port)
        try:
            with pytest.raises((ConnectionError, OSError, AssertionError, codec.MalformedPacket)):
                await asyncio.to_thread(plain.connect, f"{ids}-plain")
        finally:
            plain.close()
    finally:
        assert await node.terminate() == 0
