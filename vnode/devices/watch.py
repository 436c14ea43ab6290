"""The node's KubeEdge Devices from the API server, into the twins and back.

Two list-watches (``devices.kubeedge.io/v1beta1`` Devices and DeviceModels; the CRDs declare no
selectable fields, so Devices are filtered here on ``spec.nodeName``). A Device of this node becomes
a twin device ``{namespace}/{name}`` with one twin per ``spec.properties[]``: its type from the
DeviceModel's property of the same name (INT, FLOAT, DOUBLE, STRING, BOOLEAN; BYTES and anything
else are strings), its expected value from ``desired.value``. A change of a desired value is a
delta to the mapper (``DeviceTwins.put_device``).

The other way: values a mapper reports are merge-patched into ``status.twins[]`` (``reported``
and ``observedDesired``) on the Device itself (the CRD has no status subresource), only for the
properties its spec declares. Devices with unreported changes are remembered (``Reports``) and
patched when the API answers again, the latest value per property, none lost; after a restart
every device with reported values is patched once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.controllers.informer import ListWatch
from vnode.devices.twins import DeviceTwins, Reports

log = logging.getLogger(__name__)

API = "/apis/devices.kubeedge.io/v1beta1"
TYPES = {"INT": "int", "FLOAT": "float", "DOUBLE": "double", "STRING": "string", "BOOLEAN": "boolean"}
MAX_BACKOFF = 30.0

Obj = dict[str, Any]


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


class DeviceWatch:
    """See the module docstring; ``run`` until cancelled (the node's task group owns it)."""

    def __init__(self, masters: Masters, twins: DeviceTwins, reports: Reports, node_name: str) -> None:
        self.masters = masters
        self.twins = twins
        self.reports = reports
        self.node_name = node_name
        self.devices: dict[str, Obj] = {}  # this node's Devices, by namespace/name
        self.models: dict[str, Obj] = {}
        self._changed = asyncio.Event()
        self.device_watch = ListWatch(
            masters,
            f"{API}/devices",
            {},
            what="devices",
            replace=self._replace_devices,
            apply=self._apply_device,
            settled=self._settle,
        )
        self.model_watch = ListWatch(
            masters,
            f"{API}/devicemodels",
            {},
            what="device models",
            replace=self._replace_models,
            apply=self._apply_model,
            settled=self._settle,
        )
        self.patches = 0  # status patches sent, for tests and `vnode status`

    async def run(self) -> None:
        for device_id, device in self.twins.devices.items():
            if any((t.get("actual") or {}).get("value") for t in device["twin"].values()):
                self.reports.mark(device_id)  # reported before a restart: patched once the API answers
        async with asyncio.TaskGroup() as group:
            group.create_task(self.model_watch.run(), name="device-models")
            group.create_task(self.device_watch.run(), name="devices")
            group.create_task(self._sync(), name="device-twins-sync")
            group.create_task(self._report(), name="device-status")

    # -- from the API --------------------------------------------------------------------------

    async def _replace_devices(self, items: list[Obj]) -> None:
        self.devices = {_key(d): d for d in items if (d.get("spec") or {}).get("nodeName") == self.node_name}
        self._changed.set()

    def _apply_device(self, kind: str, obj: Obj) -> bool:
        key = _key(obj)
        mine = (obj.get("spec") or {}).get("nodeName") == self.node_name
        if kind == "DELETED" or not mine:
            self.devices.pop(key, None)
        else:
            self.devices[key] = obj
        self._changed.set()
        return False

    async def _replace_models(self, items: list[Obj]) -> None:
        self.models = {_key(m): m for m in items}
        self._changed.set()

    def _apply_model(self, kind: str, obj: Obj) -> bool:
        if kind == "DELETED":
            self.models.pop(_key(obj), None)
        else:
            self.models[_key(obj)] = obj
        self._changed.set()
        return False

    async def _settle(self) -> None:
        return None

    async def _sync(self) -> None:
        """Bring the twins in step with the Devices, after each change (one writer: this loop)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            if not self.device_watch.synced.is_set():
                continue  # never remove twins on a partial view
            for key, device in list(self.devices.items()):
                try:
                    await self.twins.put_device(
                        key, device["metadata"]["name"], self._properties(key, device)
                    )
                except errors.VnodeError as exc:
                    log.warning("device %s: %s", key, exc)
            for key in [k for k in self.twins.devices if k not in self.devices]:
                await self.twins.remove_device(key)

    def _properties(self, key: str, device: Obj) -> dict[str, tuple[str, str | None]]:
        spec = device.get("spec") or {}
        namespace = key.split("/", 1)[0]
        model_name = (spec.get("deviceModelRef") or {}).get("name", "")
        model = self.models.get(f"{namespace}/{model_name}") or {}
        kinds = {
            p.get("name"): TYPES.get(str(p.get("type", "")).upper(), "string")
            for p in (model.get("spec") or {}).get("properties") or []
        }
        properties = {}
        for prop in spec.get("properties") or []:
            name = prop.get("name")
            if not isinstance(name, str) or not name:
                continue
            desired = (prop.get("desired") or {}).get("value")
            properties[name] = (
                kinds.get(name, "string"),
                desired if isinstance(desired, str) and desired else None,
            )
        return properties

    # -- to the API ----------------------------------------------------------------------------

    async def _report(self) -> None:
        delay = 0.5
        await self.device_watch.synced.wait()  # after a restart: patch only Devices the API has listed
        while True:
            device_id = await self.reports.next()
            try:
                await self._patch(device_id)
                delay = 0.5
            except errors.NotFound:
                pass  # the Device is gone
            except errors.VnodeError as exc:
                self.reports.mark(device_id)  # again later: the latest values, whatever they are then
                log.info("device %s: status not written (%s); again in %.1fs", device_id, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_BACKOFF)

    async def _patch(self, device_id: str) -> None:
        twin_device = self.twins.devices.get(device_id)
        device = self.devices.get(device_id)
        if twin_device is None or device is None:
            return
        declared = [p.get("name") for p in (device.get("spec") or {}).get("properties") or []]
        twins = []
        for name in declared:
            twin = twin_device["twin"].get(name) or {}
            actual = (twin.get("actual") or {}).get("value")
            if actual is None:
                continue
            entry: Obj = {
                "propertyName": name,
                "reported": {"value": actual, "metadata": _metadata(twin, "actual")},
            }
            expected = (twin.get("expected") or {}).get("value")
            if expected is not None:
                entry["observedDesired"] = {"value": expected, "metadata": _metadata(twin, "expected")}
            twins.append(entry)
        if not twins:
            return
        namespace, name = device_id.split("/", 1)
        await self.masters.request(
            "PATCH",
            f"{API}/namespaces/{namespace}/devices/{name}",
            body={"status": {"twins": twins}},
            content_type="application/merge-patch+json",
        )
        self.patches += 1


def _metadata(twin: Obj, side: str) -> dict[str, str]:
    stamp = ((twin.get(side) or {}).get("metadata") or {}).get("timestamp")
    kind = (twin.get("metadata") or {}).get("type", "string")
    meta = {"type": str(kind)}
    if stamp is not None:
        meta["timestamp"] = str(stamp)
    return meta
