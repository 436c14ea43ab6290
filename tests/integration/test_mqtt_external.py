"""The event bus on an external broker (a real mosquitto): reconnect with re-subscribe, the outbox
across a broker outage and across a restart of the bus, and vnode run in modes 1 and 2 answering a
paho mapper on each broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from integration.mosquitto import Mosquitto
from integration.mqttclients import Paho
from integration.node import VnodeProcess, free_port, wait_for
from vnode.mqtt.client import OUTBOX, ExternalBus
from vnode.mqtt.sessions import Message
from vnode.store import Store


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own: the tests stop and start it."""
    instance = Mosquitto(tmp_path)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store")
    try:
        yield s
    finally:
        await s.close()


def bus_for(m: Mosquitto, store: Store) -> ExternalBus:
    return ExternalBus(
        m.host, m.port, store, sub_client_id="hub-client-sub-n", pub_client_id="hub-client-pub-n"
    )


@contextlib.asynccontextmanager
async def running(bus: ExternalBus) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(bus.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def connected(bus: ExternalBus) -> bool:
    return bus.connected


async def test_subscribes_publishes_and_survives_an_outage(mosquitto: Mosquitto, store: Store) -> None:
    heard: asyncio.Queue[Message] = asyncio.Queue()
    bus = bus_for(mosquitto, store)
    bus.listen("$hw/events/device/+/twin/+", heard.put_nowait)
    mapper = Paho(mosquitto.host, mosquitto.port, "mapper")
    async with running(bus):
        await wait_for(lambda: connected(bus), timeout=10, what="both clients connected")
        await mapper.connect()
        await mapper.subscribe("$hw/events/device/d/twin/update/result", 1)
        # The subscription is in place once a publish reaches the bus (re-sent until it does).
        async with asyncio.timeout(10):
            while heard.empty():
                await mapper.publish("$hw/events/device/d/twin/get", b"{}", qos=1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await heard.get()
                        break
        bus.publish("$hw/events/device/d/twin/update/result", b"first", qos=1)
        assert (await mapper.next()).payload == b"first"
        await mapper.close()

        await asyncio.to_thread(mosquitto.pause)
        await wait_for(lambda: disconnected(bus), timeout=10, what="the bus to see the outage")
        for i in range(3):
            bus.publish("$hw/events/device/d/twin/update/result", f"away-{i}".encode(), qos=1)
        await wait_for(lambda: _stored(store, 3), timeout=10, what="the outbox in the store")
        await asyncio.to_thread(mosquitto.resume)  # persistence is off: the broker forgot everything

        back = Paho(mosquitto.host, mosquitto.port, "mapper-2")
        await back.connect()
        await back.subscribe("$hw/events/device/d/twin/update/result", 1)
        await wait_for(lambda: connected(bus), timeout=40, what="the bus to reconnect")
        got = [(await back.next()).payload for _ in range(3)]
        assert got == [b"away-0", b"away-1", b"away-2"]
        await wait_for(lambda: _stored(store, 0), timeout=10, what="the outbox emptied")
        # Subscribed again on reconnect: a mapper's request reaches the bus.
        while not heard.empty():
            heard.get_nowait()
        await back.publish("$hw/events/device/d/twin/get", b"again", qos=1)
        async with asyncio.timeout(10):
            assert (await heard.get()).payload == b"again"
        await back.close()
    assert bus.stats.connects >= 4


async def disconnected(bus: ExternalBus) -> bool:
    return not bus.connected


async def _stored(store: Store, count: int) -> bool:
    return len(store.items(OUTBOX)) == count


async def test_outbox_survives_a_restart_of_the_bus(mosquitto: Mosquitto, store: Store) -> None:
    await asyncio.to_thread(mosquitto.pause)
    first = bus_for(mosquitto, store)
    async with running(first):
        first.publish("$hw/events/node/n/membership/updated", b"kept", qos=1)
        await wait_for(lambda: _stored(store, 1), timeout=10, what="the outbox in the store")
    await asyncio.to_thread(mosquitto.resume)
    mapper = Paho(mosquitto.host, mosquitto.port, "mapper")
    await mapper.connect()
    await mapper.subscribe("$hw/events/node/n/#", 1)
    second = bus_for(mosquitto, store)
    assert second.waiting == 1
    try:
        async with running(second):
            assert (await mapper.next()).payload == b"kept"
            await wait_for(lambda: _stored(store, 0), timeout=10, what="the outbox emptied")
    finally:
        await mapper.close()


@pytest.mark.parametrize("mode", [1, 2])
async def test_vnode_twins_answer_on_the_external_broker(
    mode: int, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    internal = free_port()
    args = [
        "--event-bus",
        f"--mqtt-mode={mode}",
        f"--mqtt-server-internal=tcp://127.0.0.1:{internal}",
        f"--mqtt-server-external=tcp://127.0.0.1:{mosquitto.port}",
    ]
    node = VnodeProcess(tmp_path / "node", f"unix://{tmp_path}/absent.sock", extra_args=args)
    await node.start()
    ports = [mosquitto.port] + ([internal] if mode == 1 else [])
    mappers = [Paho("127.0.0.1", port, f"mapper-{port}") for port in ports]
    try:
        for i, mapper in enumerate(mappers):
            await mapper.connect()
            await mapper.subscribe("$hw/events/device/+/twin/get/result", 1)
            # Until vnode's subscriber is connected, a request may go unheard: ask until answered.
            async with asyncio.timeout(30):
                while True:
                    await mapper.publish(
                        "$hw/events/device/ghost/twin/get", json.dumps({"event_id": f"g{i}"}).encode(), 1
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            result = await asyncio.to_thread(mapper.messages.get, True, 0.5)
                            break
            body = json.loads(result.payload)
            assert body["event_id"] == f"g{i}" and body["code"] == 404
    finally:
        for mapper in mappers:
            await mapper.close()
        assert await node.terminate() == 0
    if mode == 2:
        assert "MQTT broker (internal)" not in node.log_tail(200)
