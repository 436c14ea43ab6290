"""Device twins driven by a paho "mapper", through each event-bus mode (0: vnode's broker; 1: both,
the mapper on mosquitto; 2: mosquitto only): golden JSON per topic, every error code, and twins
that survive a restart (the store reopened, a new broker and twins).

Timestamps come from an injected clock so the JSON is compared whole; event ids vnode makes up
itself (delta, state result, membership updated) are uuids, checked as such and masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.mosquitto import Mosquitto
from integration.mqttclients import Paho
from integration.node import wait_for
from vnode.devices.twins import DeviceTwins
from vnode.mqtt.broker import Broker
from vnode.mqtt.client import ExternalBus, FanoutBus
from vnode.store import Store

NODE = "edge-1"
T = 1_700_000_000_000  # the clock's milliseconds


@dataclass
class Edge:
    mode: int
    broker: Broker
    twins: DeviceTwins
    store: Store
    port: int  # where the mapper connects: vnode's broker (mode 0), mosquitto (modes 1, 2)
    tasks: list[asyncio.Task[None]]
    mosquitto: Mosquitto | None = None


async def start_edge(root: Path, mode: int = 0) -> Edge:
    """Twins on the event bus of ``mode``: vnode's broker, both (the mapper on mosquitto), or
    mosquitto only."""
    store = await Store.open(root / "store")
    broker = Broker()
    port = await broker.start("127.0.0.1", 0)
    if mode == 0:
        twins = DeviceTwins(store, broker, NODE, clock=lambda: T)
        return Edge(mode, broker, twins, store, port, [asyncio.create_task(twins.run())])
    mosquitto = Mosquitto(root)
    await asyncio.to_thread(mosquitto.start)
    external = ExternalBus(mosquitto.host, mosquitto.port, store, sub_client_id="sub", pub_client_id="pub")
    bus = FanoutBus(broker, external) if mode == 1 else external
    twins = DeviceTwins(store, bus, NODE, clock=lambda: T)
    tasks = [asyncio.create_task(twins.run()), asyncio.create_task(external.run())]
    edge = Edge(mode, broker, twins, store, mosquitto.port, tasks, mosquitto)

    async def subscribed() -> bool:
        return external.subscribed

    await wait_for(subscribed, timeout=10, what="the twins subscribed on mosquitto")
    return edge


async def stop_edge(edge: Edge) -> None:
    for task in edge.tasks:
        task.cancel()
    for task in edge.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await edge.broker.close()
    await edge.store.close()
    if edge.mosquitto is not None:
        await asyncio.to_thread(edge.mosquitto.stop)


@pytest.fixture(params=[0, 1, 2], ids=["internal", "both", "external"])
async def edge(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    e = await start_edge(tmp_path, request.param)
    try:
        yield e
    finally:
        await stop_edge(e)


@pytest.fixture
async def mapper(edge: Edge) -> AsyncIterator[Paho]:
    m = Paho("127.0.0.1", edge.port, "mapper")
    await m.connect()
    await m.subscribe("$hw/events/device/#", 1)
    await m.subscribe(f"$hw/events/node/{NODE}/membership/#", 1)
    try:
        yield m
    finally:
        await m.close()


def masked(payload: bytes) -> dict[str, Any]:
    body = json.loads(payload)
    if "event_id" in body and body["event_id"] not in ("", "e1", "e2", "g1"):
        uuid.UUID(body["event_id"])
        body["event_id"] = "<uuid>"
    return body


async def expect(mapper: Paho, topic: str) -> dict[str, Any]:
    m = await mapper.next()
    assert m.topic == topic, (m.topic, m.payload)
    return masked(m.payload)


async def publish(mapper: Paho, topic: str, body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await mapper.publish(topic, data, qos=1)


DEV = "$hw/events/device/default/thermo"


async def add_thermo(edge: Edge, mapper: Paho) -> None:
    await edge.twins.put_device(
        "default/thermo", "thermo", {"temperature": ("int", "20"), "mode": ("string", None)}
    )
    added = await expect(mapper, f"$hw/events/node/{NODE}/membership/updated")
    assert added == {
        "event_id": "<uuid>",
        "timestamp": T,
        "added_devices": [
            {
                "id": "default/thermo",
                "name": "thermo",
                "twin": {
                    "temperature": {
                        "optional": False,
                        "metadata": {"type": "int"},
                        "expected": {"value": "20", "metadata": {"timestamp": T}},
                    },
                    "mode": {"optional": False, "metadata": {"type": "string"}},
                },
            }
        ],
        "removed_devices": [],
    }
    delta = await expect(mapper, f"{DEV}/twin/update/delta")
    assert delta["delta"] == {"temperature": "20"}


async def test_update_golden(edge: Edge, mapper: Paho) -> None:
    await add_thermo(edge, mapper)
    await publish(
        mapper,
        f"{DEV}/twin/update",
        {"event_id": "e1", "timestamp": 1, "twin": {"temperature": {"actual": {"value": "18"}}}},
    )
    temperature = {
        "optional": False,
        "metadata": {"type": "int"},
        "expected": {"value": "20", "metadata": {"timestamp": T}},
        "actual": {"value": "18", "metadata": {"timestamp": T}},
    }
    own = await expect(mapper, f"{DEV}/twin/update")
    assert own["event_id"] == "e1"  # the mapper's own request (it subscribed to #)
    assert await expect(mapper, f"{DEV}/twin/update/result") == {
        "event_id": "e1",
        "timestamp": T,
        "twin": {"temperature": temperature},
    }
    last = {k: v for k, v in temperature.items() if k != "actual"}
    assert await expect(mapper, f"{DEV}/twin/update/document") == {
        "event_id": "e1",
        "timestamp": T,
        "twin": {"temperature": {"last": last, "current": temperature}},
    }
    assert await expect(mapper, f"{DEV}/twin/update/delta") == {
        "event_id": "<uuid>",
        "timestamp": T,
        "twin": {"temperature": temperature},
        "delta": {"temperature": "20"},
    }
    # Reaching the desired value: result and document, no delta (the get result comes next).
    await publish(
        mapper, f"{DEV}/twin/update", {"event_id": "e2", "twin": {"temperature": {"actual": {"value": "20"}}}}
    )
    await publish(mapper, f"{DEV}/twin/get", {"event_id": "g1"})
    answers = [m.topic for m in await mapper.until(f"{DEV}/twin/get/result") if m.topic.count("/") > 6]
    assert answers == [f"{DEV}/twin/update/result", f"{DEV}/twin/update/document", f"{DEV}/twin/get/result"]


async def test_get_and_legacy_one_segment_id(edge: Edge, mapper: Paho) -> None:
    await edge.twins.put_device("lamp", "lamp", {"power": ("boolean", None)})
    await expect(mapper, f"$hw/events/node/{NODE}/membership/updated")
    await publish(
        mapper, "$hw/events/device/lamp/twin/update", {"twin": {"power": {"actual": {"value": "true"}}}}
    )
    await mapper.until("$hw/events/device/lamp/twin/update/document")
    await publish(mapper, "$hw/events/device/lamp/twin/get", {"event_id": "g1"})
    await expect(mapper, "$hw/events/device/lamp/twin/get")
    assert await expect(mapper, "$hw/events/device/lamp/twin/get/result") == {
        "event_id": "g1",
        "timestamp": T,
        "twin": {
            "power": {
                "optional": False,
                "metadata": {"type": "boolean"},
                "actual": {"value": "true", "metadata": {"timestamp": T}},
            }
        },
    }


ERRORS = [
    ("default/thermo", "twin/update", b"{not json", 400, "Unmarshal update request body failed"),
    ("default/thermo", "twin/update", b"[1, 2]", 400, "Unmarshal update request body failed"),
    ("default/thermo", "twin/update", {"event_id": "e1"}, 400, "key:twin does not exist"),
    ("default/thermo", "twin/update", {"event_id": "e1", "twin": {"bad key!": {}}}, 400, "The key of twin"),
    ("default/thermo", "twin/update", {"twin": {"temperature": {"actual": {"value": "hot"}}}}, 400,
     "the value is not int or integer"),
    ("default/thermo", "twin/update", {"twin": {"temperature": {"actual": {"value": 18}}}}, 400,
     "Unmarshal update request body failed"),
    ("default/thermo", "twin/update", {"event_id": "e1", "twin": {"mode": {"actual": {"value": "a b"}}}}, 400,
     "The value of twin"),
    ("default/thermo", "twin/update", {"event_id": "e1", "twin": {"n": {"metadata": {"type": "blob"}}}}, 400,
     "the value type is not allowed"),
    ("default/thermo", "twin/update", {"event_id": "e1", "twin": {"t": "x" * 70_000}}, 400, "exceeds"),
    ("default/ghost", "twin/update", {"event_id": "e1", "twin": {}}, 404, "device is not existed"),
    ("default/ghost", "twin/get", {"event_id": "e1"}, 404, "Device default/ghost not found"),
    ("default/thermo", "twin/get", b"\xff", 400, "Unmarshal update request body failed"),
    ("default/thermo", "twin/get", {"event_id": 7}, 400, "Unmarshal update request body failed"),
]  # fmt: skip


@pytest.mark.parametrize(("device", "action", "body", "code", "reason"), ERRORS)
async def test_error_results(
    edge: Edge, mapper: Paho, device: str, action: str, body: Any, code: int, reason: str
) -> None:
    await add_thermo(edge, mapper)
    before = edge.store.get("device_twins", "default/thermo")
    await publish(mapper, f"$hw/events/device/{device}/{action}", body)
    assert (await mapper.next()).topic == f"$hw/events/device/{device}/{action}"  # its own request
    result = await expect(mapper, f"$hw/events/device/{device}/{action}/result")
    assert result["code"] == code and reason in result["reason"], result
    assert set(result) == {"event_id", "timestamp", "code", "reason"}
    assert result["timestamp"] == T
    assert edge.store.get("device_twins", "default/thermo") == before  # nothing applied
    assert not mapper.disconnected.is_set()


async def test_state_update_and_drops(edge: Edge, mapper: Paho) -> None:
    await add_thermo(edge, mapper)
    await publish(mapper, f"{DEV}/state/update", {"state": "sleepy"})  # not a state: dropped
    await publish(mapper, "$hw/events/device/default/ghost/state/update", {"state": "online"})  # unknown
    await publish(mapper, "$hw/events/device/a/b/c/twin/update", {"twin": {}})  # too many segments
    await publish(mapper, "$hw/events/device//twin/update", {"twin": {}})  # empty device id
    await publish(mapper, f"{DEV}/twin/cloud_updated", {"twin": {}})  # not a mapper's request
    for topic in ("$hw/events/upload/dev/temp", "SYS/dis/upload_records", "dev/user/temp"):
        await publish(mapper, topic, {"data": 1})  # for KubeEdge's cloud: counted apart
    await publish(mapper, f"{DEV}/state/update", {"state": "online"})
    seen = await mapper.until(f"{DEV}/state/update/result")
    result = masked(seen[-1].payload)
    assert result["event_id"] == "<uuid>" and result["timestamp"] == T
    assert result["device"]["name"] == "thermo" and result["device"]["state"] == "online"
    assert result["device"]["lastOnlineTime"].endswith("Z")
    assert [m.topic for m in seen if m.topic.endswith("/result")] == [f"{DEV}/state/update/result"]
    assert edge.twins.stats.dropped == 5
    assert edge.twins.stats.uploads == 3


async def test_membership_get_and_remove(edge: Edge, mapper: Paho) -> None:
    await add_thermo(edge, mapper)
    await publish(mapper, f"$hw/events/node/{NODE}/membership/get", {"event_id": "g1"})
    await expect(mapper, f"$hw/events/node/{NODE}/membership/get")
    result = await expect(mapper, f"$hw/events/node/{NODE}/membership/get/result")
    assert result["event_id"] == "g1" and [d["id"] for d in result["devices"]] == ["default/thermo"]
    await edge.twins.remove_device("default/thermo")
    removed = await expect(mapper, f"$hw/events/node/{NODE}/membership/updated")
    assert removed["added_devices"] == [] and [d["id"] for d in removed["removed_devices"]] == [
        "default/thermo"
    ]


async def test_desired_change_is_a_delta(edge: Edge, mapper: Paho) -> None:
    await add_thermo(edge, mapper)
    await edge.twins.put_device(
        "default/thermo", "thermo", {"temperature": ("int", "22"), "mode": ("string", None)}
    )
    delta = await expect(mapper, f"{DEV}/twin/update/delta")
    assert delta["delta"] == {"temperature": "22"}


async def test_twins_survive_a_restart(tmp_path: Path) -> None:
    first = await start_edge(tmp_path)
    try:
        await first.twins.put_device("default/thermo", "thermo", {"temperature": ("int", "20")})
        m = Paho("127.0.0.1", first.port, "mapper")
        await m.connect()
        await m.subscribe(f"{DEV}/twin/update/result", 1)
        await publish(
            m, f"{DEV}/twin/update", {"event_id": "e1", "twin": {"temperature": {"actual": {"value": "19"}}}}
        )
        await m.next()  # the result: durable before it was published
        await m.close()
    finally:
        await stop_edge(first)
    second = await start_edge(tmp_path)
    try:
        m = Paho("127.0.0.1", second.port, "mapper")
        await m.connect()
        await m.subscribe(f"{DEV}/twin/get/result", 1)
        await publish(m, f"{DEV}/twin/get", {"event_id": "g1"})
        twin = json.loads((await m.next()).payload)["twin"]["temperature"]
        assert twin["actual"]["value"] == "19" and twin["expected"]["value"] == "20"
        await m.close()
    finally:
        await stop_edge(second)


async def test_unchanged_device_publishes_nothing(edge: Edge, mapper: Paho) -> None:
    """The Device watch puts every device at each change: an unchanged one is neither written nor
    announced again (its outstanding delta is not repeated)."""
    await add_thermo(edge, mapper)
    commits = edge.store.commits
    await edge.twins.put_device(
        "default/thermo", "thermo", {"temperature": ("int", "20"), "mode": ("string", None)}
    )
    if edge.mode == 0:  # (the external bus's outbox writes the store too)
        assert edge.store.commits == commits
    await publish(mapper, f"{DEV}/twin/get", {"event_id": "g1"})
    assert [m.topic for m in await mapper.until(f"{DEV}/twin/get/result")] == [
        f"{DEV}/twin/get",
        f"{DEV}/twin/get/result",
    ]
