"""The Node object and its heartbeats: registration, status, and the Lease in kube-node-lease.

Nothing on start-up waits for this: the controller runs as its own task, retries the API with
capped, jittered back-off, and the pods run meanwhile. Once registered it renews the Lease every
``LEASE_RENEW_SECONDS`` (holder = node name, 40 s duration, owned by the Node, recreated if
deleted) and patches the Node's status when a condition changes and at least every
``report_frequency``. Conditions come from the pressure monitor (``vnode.stats.pressure``), the
runtime's health and the store; allocatable is capacity less what is reserved and the hard
eviction thresholds.

The controller watches its own Node (as kubelet's node informer does), so status is computed
against the object the API holds now: when the API's conditions differ from what vnode last
reported (a stale patch landed late, or the node lifecycle controller marked the node Unknown
during an outage) the full status is patched at once, keeping the API's lastTransitionTime where
a condition did not change. The watch also sees the Node deleted; then ``on_deleted`` decides:
``reregister`` (the default) registers it again, ``exit`` ends vnode with ``errors.NodeDeleted``
(its containers keep running) so that a supervisor or an operator decides. Upstream kubelet does
neither and goes on failing its status updates (kubernetes#71398, #92769 discuss both choices).

The heartbeat is also the node's measure of its link: when no master answers, the node is offline
since then (kept in the store, so a restart while offline keeps the original time, and
``vnode status`` shows it). At the first heartbeat that gets through again, the status carries an
``EdgeOffline`` condition describing the outage and a ``Reconnected`` Event on the Node sums up
what happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vnode import __version__, errors
from vnode.aiokits import hostinfo
from vnode.clients.masters import Masters
from vnode.config.settings import ON_NODE_DELETED
from vnode.controllers.informer import ListWatch
from vnode.controllers.lease import LEASE_RENEW_SECONDS, NodeLease
from vnode.stats.pressure import NO_PRESSURE
from vnode.store import Store
from vnode.store.layout import LINK, LINK_NODE, LINK_STATE

log = logging.getLogger(__name__)

STATUS_CHECK_SECONDS = 10.0  # kubelet's nodeStatusUpdateFrequency
KUBELET_VERSION = f"v1.32.0-vnode.{__version__}"


def _resource_version(obj: dict[str, Any] | None) -> str | None:
    return str((obj or {}).get("metadata", {}).get("resourceVersion")) if obj else None


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeIdentity:
    """What the Node object says about this machine, fixed for the process's life."""

    name: str
    ip: str
    port: int
    root_dir: Path
    max_pods: int
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


class NodeController:
    """Registers the Node and keeps its status and Lease fresh; see the module docstring."""

    def __init__(
        self,
        masters: Masters,
        identity: NodeIdentity,
        *,
        runtime_version: Callable[[], Awaitable[str]],
        runtime_problem: Callable[[], str | None],
        report_frequency: float = 300.0,
        on_deleted: str = "reregister",
        store: Store | None = None,
        offline_summary: Callable[[datetime], str] = lambda since: "",
        record_event: Callable[[dict[str, Any], str, str, str], None] = lambda obj, type_, reason, msg: None,
        store_problem: Callable[[], str | None] = lambda: None,
        pressure: Callable[[], list[tuple[str, bool, str, str]]] = lambda: list(NO_PRESSURE),
        allocatable: Callable[[dict[str, str]], dict[str, str]] = dict,
    ) -> None:
        if on_deleted not in ON_NODE_DELETED:
            raise errors.ConfigError("cluster.onNodeDeleted", f"expected one of {ON_NODE_DELETED}")
        self.masters = masters
        self.identity = identity
        self.runtime_version = runtime_version
        self.runtime_problem = runtime_problem
        self.report_frequency = report_frequency
        self.on_deleted = on_deleted
        self.registered = asyncio.Event()
        self.uid: str | None = None
        self.lease = NodeLease(masters, identity.name, lambda: self.uid)
        self._last_conditions: dict[str, str] = {}
        self._transitions: dict[str, str] = {}
        self._last_report = 0.0
        self.store = store
        self.store_problem = store_problem
        self.pressure = pressure  # (type, status, reason, message): vnode.stats.pressure's conditions
        self.allocatable = allocatable
        self.offline_summary = offline_summary
        self.record_event = record_event
        link = (store.get(LINK, LINK_STATE) if store is not None else None) or {}
        self.offline_since: datetime | None = (
            datetime.fromisoformat(link["offlineSince"]) if link.get("offlineSince") else None
        )
        self._outage: dict[str, str] | None = None  # the last outage, for the EdgeOffline condition
        self._offline_total = 0.0  # seconds of the outages that ended (since the outage's start)
        self._saved_master = link.get("activeMaster")
        # The Node as the API last showed it; kept in the store for a restart while offline.
        self._current: dict[str, Any] | None = store.get(LINK, LINK_NODE) if store is not None else None
        self._kept_version = _resource_version(self._current)
        self._deleted = False
        self._wake = asyncio.Event()
        self.watch = ListWatch(
            masters,
            "/api/v1/nodes",
            {"fieldSelector": f"metadata.name={identity.name}"},
            what="node",
            replace=self._replace_node,
            apply=self._apply_node,
            settled=self._settled,
        )

    # -- the object --------------------------------------------------------------------------

    def labels(self) -> dict[str, str]:
        """What the node says of itself: only labels NodeRestriction lets a node set (a role
        such as ``node-role.kubernetes.io/edge`` is an admin's to give, with kubectl label)."""
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "kubernetes.io/hostname": self.identity.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
            **self.identity.labels,
        }

    def node_object(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.identity.taints:
            spec["taints"] = self.identity.taints
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.identity.name,
                "labels": self.labels(),
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
        }

    async def node_status(self) -> dict[str, Any]:
        reading = await asyncio.to_thread(hostinfo.read_host, self.identity.root_dir)
        runtime = await self._runtime_version()
        capacity = {
            "cpu": str(reading.cpus),
            "memory": f"{reading.memory_bytes // 1024}Ki",
            "pods": str(self.identity.max_pods),
            "ephemeral-storage": f"{reading.disk_bytes // 1024}Ki",
        }
        now = _now()
        problem = self.runtime_problem()
        conditions = [
            self._condition(kind, on, reason, message, now) for kind, on, reason, message in self.pressure()
        ]
        conditions.append(self._offline_condition(now))
        full = self.store_problem()
        conditions.append(
            self._condition(
                "EdgeStoreFull",
                full is not None,
                "StoreMapFull" if full else "StoreHasSpace",
                f"pod state is not kept across restarts: {full}" if full else "the local store takes writes",
                now,
            )
        )
        ready = problem is None
        conditions.append(
            self._condition(
                "Ready",
                ready,
                "KubeletReady" if ready else "KubeletNotReady",
                "kubelet is posting ready status" if ready else f"container runtime is down: {problem}",
                now,
            )
        )
        return {
            "capacity": capacity,
            "allocatable": self.allocatable(capacity),
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": self.identity.ip},
                {"type": "Hostname", "address": self.identity.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.identity.port}},
            "nodeInfo": {
                "machineID": reading.machine_id,
                "systemUUID": reading.system_uuid,
                "bootID": reading.boot_id,
                "kernelVersion": reading.kernel,
                "osImage": reading.os_image,
                "containerRuntimeVersion": runtime,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self.labels()["kubernetes.io/arch"],
            },
        }

    def _condition(self, kind: str, value: bool, reason: str, message: str, now: str) -> dict[str, Any]:
        text = "True" if value else "False"
        in_api = self._api_conditions().get(kind)
        if in_api is not None and in_api.get("status") == text and in_api.get("lastTransitionTime"):
            since = str(in_api["lastTransitionTime"])
        elif self._last_conditions.get(kind) == text:
            since = self._transitions.get(kind, now)
        else:
            since = now
        return {
            "type": kind,
            "status": text,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    def offline_seconds(self) -> float:
        """Seconds spent offline: the outages that ended plus the current one (``/metrics``)."""
        current = (datetime.now(tz=UTC) - self.offline_since).total_seconds() if self.offline_since else 0.0
        return self._offline_total + current

    def _offline_condition(self, now: str) -> dict[str, Any]:
        """Whether the node ran without its control plane: False, and after an outage its summary."""
        outage = self._outage
        message = outage["message"] if outage else "the control plane has been reachable"
        condition = self._condition(
            "EdgeOffline", False, outage["reason"] if outage else "Connected", message, now
        )
        if outage:
            condition["lastTransitionTime"] = outage["until"]
        return condition

    def _api_conditions(self) -> dict[str, dict[str, Any]]:
        status = (self._current or {}).get("status") or {}
        return {c.get("type", ""): c for c in status.get("conditions") or []}

    def _api_disagrees(self) -> bool:
        """The API holds conditions other than the ones vnode last reported (see the docstring)."""
        if self._current is None or not self._last_conditions:
            return False
        in_api = {kind: c.get("status") for kind, c in self._api_conditions().items()}
        return any(in_api.get(kind) != status for kind, status in self._last_conditions.items())

    async def _runtime_version(self) -> str:
        try:
            return await self.runtime_version()
        except errors.VnodeError:
            return "containerd://unknown"

    # -- the loops ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the Node; register (retrying), then renew the Lease and report status until
        cancelled. Raises ``errors.NodeDeleted`` when the Node is deleted and ``on_deleted`` is exit."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watch.run(), name="node-watch")
            await self._heartbeats()

    async def _heartbeats(self) -> None:
        await self._retry(self.register, "register the node")
        loop = asyncio.get_running_loop()
        next_lease = next_status = 0.0
        while True:
            self._wake.clear()
            await self._keep_node()
            if self._deleted:
                await self._node_deleted()  # raises NodeDeleted, or registers again (retrying)
                next_status = 0.0
            now = loop.time()
            try:
                if now >= next_lease:
                    next_lease = now + LEASE_RENEW_SECONDS
                    await self.renew_lease()
                    await self._link_up()
                disagrees = self._api_disagrees()
                if now >= next_status or disagrees:
                    next_status = now + STATUS_CHECK_SECONDS
                    await self.report_status(force=disagrees)
            except errors.Unavailable as exc:
                await self._link_down(exc)
            except errors.NotFound:
                self._deleted = True  # the status patch found no Node: the watch may not have said yet
                continue
            except errors.VnodeError as exc:
                log.warning("node heartbeat failed: %s", exc)
            due = min(next_lease, next_status) - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due))

    async def _link_down(self, exc: errors.VnodeError) -> None:
        if self.offline_since is not None:
            return
        self.offline_since = datetime.now(tz=UTC)
        log.warning("control plane unreachable (%s); running offline from now on", exc)
        await self._save_link({"offlineSince": self.offline_since.isoformat()})

    async def _link_up(self) -> None:
        """A heartbeat got through: the store records the active master; after an outage the
        status gets its condition and the Node its Event."""
        since = self.offline_since
        if since is None:
            if self._saved_master != self.masters.server:
                self._saved_master = self.masters.server
                await self._save_link({"activeMaster": self.masters.server})
            return
        until = datetime.now(tz=UTC)
        seconds = int((until - since).total_seconds())
        what = self.offline_summary(since)
        message = f"ran offline from {since:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ} ({seconds}s)"
        message += f"; meanwhile: {what}" if what else ""
        log.info("control plane reachable again: %s", message)
        self._outage = {"reason": "Reconnected", "message": message, "until": f"{until:%Y-%m-%dT%H:%M:%SZ}"}
        self._offline_total += (until - since).total_seconds()
        self.offline_since = None
        self._saved_master = self.masters.server
        await self._save_link({"activeMaster": self.masters.server})
        node = {
            "kind": "Node",
            "metadata": {"name": self.identity.name, "namespace": "default", "uid": self.uid},
        }
        self.record_event(node, "Normal", "Reconnected", message)
        await self.report_status(force=True)

    async def _keep_node(self) -> None:
        """Store the Node as last seen when it changed, for the local API after a restart offline."""
        version = _resource_version(self._current)
        if self.store is None or self._current is None or version == self._kept_version:
            return
        self._kept_version = version
        await self._put(LINK_NODE, self._current)

    async def _save_link(self, state: dict[str, str]) -> None:
        await self._put(LINK_STATE, state)

    async def _put(self, key: str, value: dict[str, Any]) -> None:
        """Keep ``value`` in the link table; a failing store only costs what a restart would know."""
        if self.store is not None:
            try:
                await self.store.put(LINK, key, value)
            except errors.StoreError as exc:
                log.warning("%s not kept in the store: %s", key, exc)

    async def _node_deleted(self) -> None:
        name = self.identity.name
        if self.on_deleted == "exit":
            raise errors.NodeDeleted(
                f"node {name} was deleted from the API; exiting as cluster.onNodeDeleted is 'exit' "
                "(containers keep running)"
            )
        log.warning("node %s was deleted from the API; registering it again", name)
        await self._retry(self.register, "register the node")

    # -- the watch of the Node ---------------------------------------------------------------

    async def _replace_node(self, items: list[dict[str, Any]]) -> None:
        mine = [n for n in items if (n.get("metadata") or {}).get("name") == self.identity.name]
        self._observe(mine[0] if mine else None)

    def _apply_node(self, kind: str, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if meta.get("name") != self.identity.name:
            return False
        if kind != "DELETED":
            self._observe(obj)
        elif meta.get("uid") == self.uid:  # not a late event about a Node already replaced
            self._observe(None)
        return False

    async def _settled(self) -> None:
        return None

    @property
    def current(self) -> dict[str, Any] | None:
        """The Node as the API last showed it (after a restart offline: as the store kept it)."""
        return self._current

    def _observe(self, node: dict[str, Any] | None) -> None:
        """The API's current Node (None: there is none); a registered node that is gone is deleted."""
        self._current = node
        uid = (node or {}).get("metadata", {}).get("uid")
        if self.uid is not None and uid != self.uid:
            self._deleted = True
        self._wake.set()

    async def _retry(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        delay = 0.5
        while True:
            try:
                await action()
                return
            except errors.VnodeError as exc:
                if isinstance(exc, errors.Unavailable):
                    await self._link_down(exc)
                log.warning("cannot %s yet (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)

    async def register(self) -> None:
        name = self.identity.name
        wanted = self.node_object()
        try:
            node = await self.masters.request("POST", "/api/v1/nodes", body=wanted)
            log.info("registered node %s with %s", name, self.masters.server)
        except errors.Conflict:
            patch = {"metadata": {"labels": wanted["metadata"]["labels"]}}
            if self.identity.taints:
                patch["spec"] = {"taints": self.identity.taints}
            node = await self.masters.request(
                "PATCH", f"/api/v1/nodes/{name}", body=patch, content_type="application/merge-patch+json"
            )
            log.info("node %s already registered; labels reconciled", name)
        self.uid = node["metadata"]["uid"]
        self._current = node
        self._deleted = False
        self.lease.forget()
        self._last_conditions = {}
        self.registered.set()
        await self.report_status(force=True)

    async def report_status(self, *, force: bool = False) -> None:
        """Patch the status if a condition changed or the report is due."""
        status = await self.node_status()
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        loop = asyncio.get_running_loop()
        due = loop.time() - self._last_report >= self.report_frequency
        if not force and not due and conditions == self._last_conditions:
            return
        await self.masters.request(
            "PATCH",
            f"/api/v1/nodes/{self.identity.name}/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
            answer=False,
        )
        for c in status["conditions"]:
            if self._last_conditions.get(c["type"]) != c["status"]:
                self._transitions[c["type"]] = c["lastTransitionTime"]
        self._last_conditions = conditions
        self._last_report = loop.time()

    async def renew_lease(self) -> None:
        await self.lease.renew()
