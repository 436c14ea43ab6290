"""KubeEdge-compatible device twins on the event bus, kept in the LMDB store.

A mapper speaks to the node on KubeEdge's topics (device id ``{namespace}/{name}``, or the legacy
one-segment ``{name}``)::

    $hw/events/device/{id}/twin/update  -> .../twin/update/result, .../twin/update/document,
                                           .../twin/update/delta (only when an expected differs
                                           from the actual)
    $hw/events/device/{id}/twin/get     -> .../twin/get/result
    $hw/events/device/{id}/state/update -> .../state/update/result
    $hw/events/node/{node}/membership/get -> .../membership/get/result
    (vnode's side)                      -> $hw/events/node/{node}/membership/updated

The JSON field names, key and value rules (keys and values ``[a-zA-Z0-9-_.,:/@#]``, 128 and 512
long at most; values are strings of the twin's declared type) and the error results
``{event_id, timestamp, code, reason}`` with 400/404/500 are KubeEdge's. An update is applied
whole or not at all; it is durable in the store before any result is published, so an answer a
mapper saw survives a vnode restart, and a ``twin/get`` after a restart answers from the store.

Devices are registered with ``put_device`` (by the Device watch; tests call it directly).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from vnode.store import Store, layout

log = logging.getLogger(__name__)

TABLE = layout.DEVICE_TWINS
DEVICE_PREFIX = "$hw/events/device/"
NODE_PREFIX = "$hw/events/node/"
MAX_PAYLOAD = 64 * 1024  # a twin document is small; anything larger is refused (400)
QUEUE_LIMIT = 10_000  # requests waiting to be handled; past this they are dropped and counted
KEY = re.compile(r"[a-zA-Z0-9\-_.,:/@#]{1,128}")
VALUE = re.compile(r"[a-zA-Z0-9\-_.,:/@#]{1,512}")
INTEGER = re.compile(r"-?[0-9]+")
FLOAT = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE]-?[0-9]+)?")
TYPES = ("string", "int", "integer", "float", "double", "boolean", "deleted", "")
STATES = ("online", "offline", "ok", "unknown", "unhealthy")

BAD_REQUEST, NOT_FOUND, INTERNAL = 400, 404, 500
UPLOADS = ("$hw/events/upload/#", "SYS/dis/upload_records", "+/user/#")  # edgecore's cloud-bound topics
OUTPUTS = ("/result", "/document", "/delta", "/membership/updated")


class Bus(Protocol):
    """What the twins need of the event bus (``vnode.mqtt.broker.Broker`` is one)."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None: ...

    def listen(self, topic_filter: str, callback: Callable[[Any], None]) -> Callable[[], None]: ...


class TwinError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class TwinStats:
    handled: int = 0
    errors: int = 0  # error results published
    dropped: int = 0  # requests dropped (queue full, unusable state update)
    uploads: int = 0  # messages for KubeEdge's cloud ($hw/events/upload/#, ...): no cloud here


class Reports:
    """Devices whose reported values the API has not seen yet; one reader (the Device watch)
    takes them one at a time, each once however often it was marked meanwhile."""

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}
        self._event = asyncio.Event()

    def mark(self, device_id: str) -> None:
        self._ids[device_id] = None
        self._event.set()

    async def next(self) -> str:
        while not self._ids:
            self._event.clear()
            await self._event.wait()
        device_id = next(iter(self._ids))
        del self._ids[device_id]
        return device_id

    def __len__(self) -> int:
        return len(self._ids)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_value(kind: str, value: str) -> None:
    """KubeEdge's value rule: the character set, then the declared type."""
    if value and not VALUE.fullmatch(value):
        raise TwinError(
            BAD_REQUEST,
            "The value of twin must only include upper or lowercase letters, number, english, and "
            "special letter - _ . , : / @ # and the length of value should be less than 512 bytes",
        )
    if kind in ("int", "integer"):
        if not INTEGER.fullmatch(value) or not -(1 << 63) <= int(value) < 1 << 63:
            raise TwinError(BAD_REQUEST, "the value is not int or integer")
    elif kind in ("float", "double"):
        if not FLOAT.fullmatch(value) or not math.isfinite(float(value)):
            raise TwinError(BAD_REQUEST, "the value is not float")
    elif kind == "boolean":
        if value not in ("true", "false"):
            raise TwinError(BAD_REQUEST, "the bool value must be true or false")
    elif kind not in TYPES:
        raise TwinError(BAD_REQUEST, "the value type is not allowed")


def public(twin: dict[str, Any]) -> dict[str, Any]:
    """A twin as mappers see it: without the version bookkeeping."""
    return {k: v for k, v in twin.items() if k not in ("expected_version", "actual_version")}


class DeviceTwins:
    """One owner of every device's twin: requests are handled one at a time by ``run``."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        node_name: str,
        *,
        qos: int = 1,
        retain: bool = False,
        reports: Reports | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.bus = bus
        self.node_name = node_name
        self.qos, self.retain = qos, retain  # of every publish (eventBus.mqttQOS, .mqttRetain)
        self.reports = reports  # told of reported values, when a control plane wants them
        self.clock = clock
        self.stats = TwinStats()
        self.devices: dict[str, dict[str, Any]] = {k: v for k, v in store.items(TABLE) if isinstance(v, dict)}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._logged: set[str] = set()

    # -- registration (the Device watch) -------------------------------------------------------

    async def put_device(
        self, device_id: str, name: str, properties: dict[str, tuple[str, str | None]]
    ) -> None:
        """Add or update a device: ``properties`` maps a twin key to (type, desired value or None).
        A new device is announced on ``membership/updated``; a changed desired value is a delta;
        nothing changed, nothing is written or published (the Device watch calls this often)."""
        known = self.devices.get(device_id)
        device: dict[str, Any] = (
            copy.deepcopy(known) if known is not None else {"id": device_id, "name": name, "twin": {}}
        )
        now = self.clock()
        for key, (kind, desired) in properties.items():
            twin = device["twin"].setdefault(key, {"optional": False, "metadata": {"type": kind}})
            twin["metadata"] = {"type": kind}
            expected = twin.get("expected", {}).get("value")
            if desired is not None and desired != expected:
                twin["expected"] = {"value": desired, "metadata": {"timestamp": now}}
                version = twin.setdefault("expected_version", {"cloud": 0, "edge": 0})
                version["cloud"] += 1
        if device == known:
            return
        await self.store.put(TABLE, device_id, device)
        self.devices[device_id] = device
        if known is None:
            self._publish_membership(added=[device], removed=[])
        if known is None or any(
            (t.get("expected") or {}).get("value")
            != ((known["twin"].get(k) or {}).get("expected") or {}).get("value")
            for k, t in device["twin"].items()
        ):
            self._publish_delta(device_id, device)

    async def remove_device(self, device_id: str) -> None:
        device = self.devices.get(device_id)
        if device is None:
            return
        await self.store.delete(TABLE, device_id)
        del self.devices[device_id]
        self._publish_membership(added=[], removed=[device])

    # -- the loop ------------------------------------------------------------------------------

    def _upload(self, message: Any) -> None:
        """Traffic edgecore would forward to its cloud; there is none here: count it, log once."""
        self.stats.uploads += 1
        if message.topic not in self._logged and len(self._logged) < 1000:
            self._logged.add(message.topic)
            log.info("device twins: %s is for KubeEdge's cloud; counted, not forwarded", message.topic)

    def _received(self, message: Any) -> None:
        if message.topic.endswith(OUTPUTS):
            return  # vnode's own answers (and other twins' on a shared broker)
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._drop(message.topic, "too many requests waiting")
            return
        self._queue.put_nowait((message.topic, message.payload))

    async def run(self) -> None:
        """Handle requests until cancelled (the node's task group owns this)."""
        stops = [
            self.bus.listen(DEVICE_PREFIX + "#", self._received),
            self.bus.listen(f"{NODE_PREFIX}{self.node_name}/membership/get", self._received),
            *(self.bus.listen(f, self._upload) for f in UPLOADS),
        ]
        try:
            while True:
                topic, payload = await self._queue.get()
                try:
                    await self.handle(topic, payload)
                except Exception:
                    log.exception("device twins: handling %s failed", topic)
        finally:
            for stop in stops:
                stop()

    async def handle(self, topic: str, payload: bytes) -> None:
        self.stats.handled += 1
        if topic.startswith(NODE_PREFIX):
            self._membership_get(payload)
            return
        rest = topic[len(DEVICE_PREFIX) :].split("/")
        device_id, action = "/".join(rest[:-2]), "/".join(rest[-2:])
        if len(rest) not in (3, 4) or not all(rest[:-2]):
            action = ""  # a device id is {namespace}/{name} or {name}
        if action == "twin/update":
            await self._update(device_id, payload)
        elif action == "twin/get":
            self._get(device_id, payload)
        elif action == "state/update":
            await self._state(device_id, payload)
        else:
            self._drop(topic, "not a device request vnode answers")

    def _drop(self, topic: str, why: str) -> None:
        """Count a request nothing answers; log it once per topic (a flood logs a bounded amount)."""
        self.stats.dropped += 1
        if topic not in self._logged and len(self._logged) < 1000:
            self._logged.add(topic)
            log.info("device twins: dropped a message on %s: %s (logged once per topic)", topic, why)

    # -- twin/update ---------------------------------------------------------------------------

    async def _update(self, device_id: str, payload: bytes) -> None:
        topic = f"{DEVICE_PREFIX}{device_id}/twin/update/result"
        event_id = ""
        try:
            request = self._json(payload)
            event_id = _event_id(request)
            twins = request.get("twin")
            if not isinstance(twins, dict):
                raise TwinError(BAD_REQUEST, "Update twin error, key:twin does not exist")
            device = self.devices.get(device_id)
            if device is None:
                raise TwinError(NOT_FOUND, "update rejected due to the device is not existed")
            updated, document = self._apply(device, twins)
            try:
                await self.store.put(TABLE, device_id, updated)
            except Exception as exc:
                raise TwinError(INTERNAL, f"the twin could not be stored: {exc}") from exc
        except TwinError as exc:
            self._error(topic, event_id, exc)
            return
        self.devices[device_id] = updated
        if self.reports is not None and any(
            _value(c, "actual") for c in twins.values() if isinstance(c, dict)
        ):
            self.reports.mark(device_id)
        now = self.clock()
        changed = {k: public(updated["twin"][k]) for k in twins if k in updated["twin"]}
        self._send(topic, {"event_id": event_id, "timestamp": now, "twin": changed})
        if document:
            doc_topic = f"{DEVICE_PREFIX}{device_id}/twin/update/document"
            self._send(doc_topic, {"event_id": event_id, "timestamp": now, "twin": document})
        self._publish_delta(device_id, updated)

    def _apply(self, device: dict[str, Any], twins: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The device after the update, and the update's document; nothing changes on an error."""
        updated = copy.deepcopy(device)
        document: dict[str, Any] = {}
        now = self.clock()
        for key, change in twins.items():
            if not KEY.fullmatch(key):
                raise TwinError(
                    BAD_REQUEST,
                    "The key of twin must only include upper or lowercase letters, number, english, and "
                    "special letter - _ . , : / @ # and the length of key should be less than 128 bytes",
                )
            old = updated["twin"].get(key)
            if change is None:  # deletes the twin
                if old is not None:
                    document[key] = {"last": public(old), "current": None}
                    del updated["twin"][key]
                continue
            if not isinstance(change, dict):
                raise TwinError(BAD_REQUEST, "the request body is wrong")
            twin = copy.deepcopy(old) if old is not None else self._new_twin(change)
            kind = str(twin.get("metadata", {}).get("type", "string"))
            for side in ("expected", "actual"):
                value = _value(change, side)
                if value is None:
                    continue
                check_value(kind, value)
                twin[side] = {"value": value, "metadata": {"timestamp": now}}
                version = twin.setdefault(f"{side}_version", {"cloud": 0, "edge": 0})
                version["edge"] += 1
            if "optional" in change and isinstance(change["optional"], bool):
                twin["optional"] = change["optional"]
            document[key] = {"last": public(old) if old is not None else None, "current": public(twin)}
            updated["twin"][key] = twin
        return updated, document

    @staticmethod
    def _new_twin(change: dict[str, Any]) -> dict[str, Any]:
        metadata = change.get("metadata")
        kind = metadata.get("type", "string") if isinstance(metadata, dict) else "string"
        if not isinstance(kind, str) or kind not in TYPES:
            raise TwinError(BAD_REQUEST, "the value type is not allowed")
        optional = change.get("optional", True)
        return {
            "optional": optional if isinstance(optional, bool) else True,
            "metadata": {"type": kind or "string"},
        }

    # -- twin/get, state/update, membership ----------------------------------------------------

    def _get(self, device_id: str, payload: bytes) -> None:
        topic = f"{DEVICE_PREFIX}{device_id}/twin/get/result"
        event_id = ""
        try:
            event_id = _event_id(self._json(payload))
            device = self.devices.get(device_id)
            if device is None:
                raise TwinError(NOT_FOUND, f"Device {device_id} not found while getting twin")
        except TwinError as exc:
            self._error(topic, event_id, exc)
            return
        twins = {k: public(t) for k, t in device["twin"].items()}
        self._send(topic, {"event_id": event_id, "timestamp": self.clock(), "twin": twins})

    async def _state(self, device_id: str, payload: bytes) -> None:
        """As KubeEdge: an unknown device or state is dropped without an answer (counted here)."""
        try:
            request = self._json(payload)
        except TwinError as exc:
            self._drop(f"{DEVICE_PREFIX}{device_id}/state/update", exc.reason)
            return
        state = request.get("state")
        device = self.devices.get(device_id)
        if device is None or not isinstance(state, str) or state.lower() not in STATES:
            self._drop(f"{DEVICE_PREFIX}{device_id}/state/update", f"unknown device or state {state!r}")
            return
        updated = dict(device)
        updated["state"] = state
        if state.lower() in ("online", "ok"):
            updated["last_online"] = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            updated["last_online"] = ""
        await self.store.put(TABLE, device_id, updated)
        self.devices[device_id] = updated
        result = {
            "event_id": str(uuid.uuid4()),
            "timestamp": self.clock(),
            "device": {"name": updated["name"], "state": state, "lastOnlineTime": updated["last_online"]},
        }
        self._send(f"{DEVICE_PREFIX}{device_id}/state/update/result", result)

    def _membership_get(self, payload: bytes) -> None:
        topic = f"{NODE_PREFIX}{self.node_name}/membership/get/result"
        event_id = ""
        try:
            event_id = _event_id(self._json(payload))
        except TwinError as exc:
            self._error(topic, event_id, exc)
            return
        devices = [_membership_entry(d) for _, d in sorted(self.devices.items())]
        self._send(topic, {"event_id": event_id, "timestamp": self.clock(), "devices": devices})

    def _publish_membership(self, added: list[dict[str, Any]], removed: list[dict[str, Any]]) -> None:
        self._send(
            f"{NODE_PREFIX}{self.node_name}/membership/updated",
            {
                "event_id": str(uuid.uuid4()),
                "timestamp": self.clock(),
                "added_devices": [_membership_entry(d) for d in added],
                "removed_devices": [_membership_entry(d) for d in removed],
            },
        )

    def _publish_delta(self, device_id: str, device: dict[str, Any]) -> None:
        twins, delta = {}, {}
        for key, twin in device["twin"].items():
            expected = (twin.get("expected") or {}).get("value") or ""
            if not expected:
                continue
            if expected != (twin.get("actual") or {}).get("value"):
                delta[key] = expected
            twins[key] = public(twin)
        if delta:
            message = {
                "event_id": str(uuid.uuid4()),
                "timestamp": self.clock(),
                "twin": twins,
                "delta": delta,
            }
            self._send(f"{DEVICE_PREFIX}{device_id}/twin/update/delta", message)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _json(payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_PAYLOAD:
            raise TwinError(BAD_REQUEST, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise TwinError(
                BAD_REQUEST, "Unmarshal update request body failed, please check the request"
            ) from None
        if not isinstance(data, dict):
            raise TwinError(BAD_REQUEST, "Unmarshal update request body failed, please check the request")
        return data

    def _error(self, topic: str, event_id: str, exc: TwinError) -> None:
        self.stats.errors += 1
        self._send(
            topic, {"event_id": event_id, "timestamp": self.clock(), "code": exc.code, "reason": exc.reason}
        )

    def _send(self, topic: str, body: dict[str, Any]) -> None:
        self.bus.publish(topic, json.dumps(body, separators=(",", ":")).encode(), self.qos, self.retain)


def _event_id(request: dict[str, Any]) -> str:
    event_id = request.get("event_id", "")
    if not isinstance(event_id, str):
        raise TwinError(BAD_REQUEST, "Unmarshal update request body failed, please check the request")
    return event_id


def _value(change: dict[str, Any], side: str) -> str | None:
    part = change.get(side)
    if part is None:
        return None
    if not isinstance(part, dict) or not isinstance(part.get("value"), str):
        raise TwinError(BAD_REQUEST, "Unmarshal update request body failed, please check the request")
    value: str = part["value"]
    return value


def _membership_entry(device: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": device["id"], "name": device["name"]}
    if device.get("state"):
        entry["state"] = device["state"]
    if device.get("last_online"):
        entry["last_online"] = device["last_online"]
    entry["twin"] = {k: public(t) for k, t in device["twin"].items()}
    return entry
