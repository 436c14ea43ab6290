"""The node's Lease in ``kube-node-lease``: renewed every ``LEASE_RENEW_SECONDS`` by the node
controller, the heartbeat the node lifecycle controller watches (the full Node status is written
far less often). Owned by the Node object, by its current UID."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0


def _micro_now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeLease:
    """Keeps the last Lease the API returned (so a renewal is one PUT, not a GET and a PUT)."""

    def __init__(self, masters: Masters, node_name: str, node_uid: Callable[[], str | None]) -> None:
        self.masters = masters
        self.node_name = node_name
        self.node_uid = node_uid
        self._lease: dict[str, Any] | None = None

    def forget(self) -> None:
        """The Node was registered again (a new UID): read the Lease again before the next PUT."""
        self._lease = None

    async def renew(self) -> None:
        """Renew (GET it first when not known; create it when missing)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node_name}"
        if self._lease is None:
            try:
                self._lease = await self.masters.request("GET", path)
            except errors.NotFound:
                self._lease = await self._create_lease()
                return
        lease = dict(self._lease)
        # managedFields left out: the API server keeps them when an update omits them, and they
        # were a third of every renewal's bytes (six a minute, for ever, on every node).
        meta = {k: v for k, v in lease.get("metadata", {}).items() if k != "managedFields"}
        lease["metadata"] = {**meta, "ownerReferences": self._owner()}
        lease["spec"] = {
            **lease.get("spec", {}),
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": _micro_now(),
        }
        try:
            self._lease = await self.masters.request("PUT", path, body=lease)
        except errors.Conflict:
            self._lease = None  # someone else wrote it: read it again next time
        except errors.NotFound:
            self._lease = await self._create_lease()

    async def _create_lease(self) -> dict[str, Any]:
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": self._owner(),
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": _micro_now(),
            },
        }
        created: dict[str, Any] = await self.masters.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body=lease
        )
        log.info("created lease %s/%s", LEASE_NAMESPACE, self.node_name)
        return created

    def _owner(self) -> list[dict[str, Any]]:
        """The Lease is owned by the Node (by its current UID: a re-registered Node has a new one)."""
        return [{"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid()}]
