"""Pods from the API server: the informer that feeds the pod manager, and the status writer.

The informer lists and watches the pods bound to this node (``fieldSelector=spec.nodeName=<node>``,
through ``ListWatch``) and hands the complete set to the pod manager as source ``api`` after every
list and every burst of events.

The status writer is a pod-manager listener: a changed status marks the pod dirty, and one task
writes dirty statuses to ``pods/{name}/status`` (latest wins per pod; a failed write stays dirty
and is retried with back-off, so a terminal status is never lost). A pod being deleted in the API
(``deletionTimestamp``) is stopped by its worker with the pod's grace period; once its containers
are gone the writer deletes the object with grace 0 and a UID precondition, as kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.controllers.informer import MAX_BACKOFF, ListWatch
from vnode.provider.protocols import ApiPodView, PodLifecycle

log = logging.getLogger(__name__)

SOURCE = "api"
MIRROR = "kubernetes.io/config.mirror"
CONFIG_HASH = "kubernetes.io/config.hash"


def _key(pod: dict[str, Any]) -> tuple[str, str]:
    meta = pod["metadata"]
    return meta.get("namespace", "default"), meta["name"]


class PodInformer:
    """List + watch of this node's pods; ``deliver(source, pods)`` gets every complete set."""

    def __init__(self, masters: Masters, node_name: str, pods: PodLifecycle) -> None:
        self.lifecycle = pods
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        # Mirror pods of our static pods are not pods to run: kept apart, by (namespace, name).
        self.mirrors: dict[tuple[str, str], dict[str, Any]] = {}
        # The status each pod has in the API, kept apart from the pod the workers see.
        self.api_statuses: dict[str, dict[str, Any]] = {}
        self._on_listed: list[Callable[[], None]] = []
        self._on_mirrors: list[Callable[[], None]] = []
        self.list_watch = ListWatch(
            masters,
            "/api/v1/pods",
            {"fieldSelector": f"spec.nodeName={node_name}"},
            what="pod",
            replace=self._replace,
            apply=self._apply,
            settled=self._deliver,
        )
        self.synced = self.list_watch.synced

    @property
    def lists(self) -> int:
        """Full lists done, for tests and `vnode status`."""
        return self.list_watch.lists

    def pod(self, uid: str) -> dict[str, Any] | None:
        """The pod as last listed or watched (the set is replaced on every list)."""
        return self.pods.get(uid)

    def api_status(self, uid: str) -> dict[str, Any] | None:
        return self.api_statuses.get(uid)

    def mirror(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.mirrors.get((namespace, name))

    def on_listed(self, callback: Callable[[], None]) -> None:
        self._on_listed.append(callback)

    def on_mirrors_changed(self, callback: Callable[[], None]) -> None:
        self._on_mirrors.append(callback)

    def _mirrors_changed(self) -> None:
        for callback in self._on_mirrors:
            callback()

    async def run(self) -> None:
        await self.list_watch.run()

    async def _deliver(self) -> None:
        await self.lifecycle.set_source_pods(SOURCE, list(self.pods.values()))

    async def _replace(self, items: list[dict[str, Any]]) -> None:
        pods = [p for p in items if not _is_mirror(p)]
        self.api_statuses = {p["metadata"]["uid"]: p.get("status") or {} for p in pods}
        self.pods = {p["metadata"]["uid"]: _with_kind(p) for p in pods}
        self.mirrors = {_key(p): p for p in items if _is_mirror(p)}
        self._mirrors_changed()
        await self._deliver()
        for callback in self._on_listed:
            callback()

    def _apply(self, kind: str, obj: dict[str, Any]) -> bool:
        """One watch event; True when the set of pods to run changed."""
        if _is_mirror(obj):
            if kind == "DELETED":
                self.mirrors.pop(_key(obj), None)
            else:
                self.mirrors[_key(obj)] = obj
            self._mirrors_changed()
            return False
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
            self.api_statuses.pop(uid, None)
        else:
            self.api_statuses[uid] = obj.get("status") or {}
            self.pods[uid] = _with_kind(obj)
        return True


def _is_mirror(pod: dict[str, Any]) -> bool:
    return MIRROR in ((pod.get("metadata") or {}).get("annotations") or {})


def mirror_of(pod: dict[str, Any]) -> dict[str, Any]:
    """The mirror pod of a static pod: its spec, marked with the config hash, owned by the Node."""
    meta = pod["metadata"]
    annotations = dict(meta.get("annotations") or {})
    annotations[MIRROR] = annotations.get(CONFIG_HASH, meta["uid"])
    node = (pod.get("spec") or {}).get("nodeName", "")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": annotations,
            # NodeRestriction admits a node's mirror pod only with its Node as controller owner.
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": "", "controller": True}
            ],
        },
        "spec": pod.get("spec") or {},
    }


def _stale(mirror: dict[str, Any] | None, pod: dict[str, Any]) -> bool:
    """A mirror that is missing, of another version of the static pod, or being deleted (kubelet
    deletes such a mirror at once and creates it again)."""
    if mirror is None:
        return True
    meta = mirror["metadata"]
    wanted = mirror_of(pod)["metadata"]["annotations"][MIRROR]
    return (meta.get("annotations") or {}).get(MIRROR) != wanted or bool(meta.get("deletionTimestamp"))


def _holds(api: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """The API's status already says all of ``status`` (a merge patch of it would change nothing)."""
    return api is not None and all(api.get(key) == value for key, value in status.items())


def _with_kind(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the workers want it: the API's status and bookkeeping are left out, so that our
    own status writes coming back through the watch are no change at all."""
    pod.setdefault("kind", "Pod")
    pod.setdefault("apiVersion", "v1")
    pod.pop("status", None)
    meta = pod.get("metadata") or {}
    for key in ("resourceVersion", "managedFields", "generation"):
        meta.pop(key, None)
    return pod


class StatusWriter:
    """Writes changed pod statuses and finishes deletions; see the module docstring."""

    def __init__(
        self,
        masters: Masters,
        pods: PodLifecycle,
        api: ApiPodView,
        node_uid: Callable[[], str | None],
    ) -> None:
        """Listens to ``pods`` (statuses) and ``api`` (lists, mirrors) from here on; ``node_uid``
        is the Node's current UID, which mirror pods are owned by (None until registered)."""
        self.masters = masters
        self.pods = pods
        self.api = api
        self.node_uid = node_uid
        self._static: dict[str, dict[str, Any]] = {}  # uid -> static pod with a mirror to keep
        self._dirty: set[str] = set()
        self._written: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self.writes = 0
        pods.add_listener(self.changed)
        api.on_listed(self.resync)
        api.on_mirrors_changed(self.mirrors_changed)

    def changed(self, uid: str) -> None:
        """Pod-manager listener: this pod's status changed, or its worker finished."""
        self._dirty.add(uid)
        self._wake.set()

    def resync(self) -> None:
        """After a full list (at start, and after every outage or failover): each pod whose status
        in the API is not the one it has now is written again. The pod's latest status is durable
        in the store, so this is the offline queue: latest wins per pod, one write per pod however
        long the outage, and a terminal status reached offline (even across a restart) is kept."""
        self._written.clear()
        for uid in self.pods.known_uids():
            self._dirty.add(uid)
        self._wake.set()

    def mirrors_changed(self) -> None:
        """The informer saw mirror pods change: recreate the ones that are gone or stale (our own
        status writes come back here too, and must not cause another write)."""
        for uid, pod in self._static.items():
            if _stale(self.api.mirror(*_key(pod)), pod):
                self._written.pop(uid, None)
                self._dirty.add(uid)
                self._wake.set()

    async def run(self) -> None:
        delay = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for uid in list(self._dirty):
                self._dirty.discard(uid)
                try:
                    await self._write(uid)
                except errors.NotFound:
                    self._written.pop(uid, None)
                except errors.VnodeError as exc:
                    log.warning("pod status of uid %s not written yet: %s", uid, exc)
                    self._dirty.add(uid)
                    failed = True
            if failed:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_BACKOFF)
                self._wake.set()
            else:
                delay = 0.5

    async def _write(self, uid: str) -> None:
        current = self.pods.status_of(uid)
        if current is None:
            self._written.pop(uid, None)
            static = self._static.pop(uid, None)
            if static is not None:
                await self._delete_mirror(static)
                return
            pod = self.api.pod(uid)
            if pod is not None and pod["metadata"].get("deletionTimestamp"):
                await self._finish_deletion(pod)
            return
        pod, status = current
        source = self.pods.source_of(uid)
        if source is None:
            return  # gone from its source, being stopped: nothing to write, and no mirror to make
        if source != SOURCE:
            await self._write_mirror(uid, pod, status)
            return
        if self._written.get(uid) == status:
            return
        if _holds(self.api.api_status(uid), status):
            self._written[uid] = status
            return
        namespace, name = _key(pod)
        await self.masters.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            body={"metadata": {"uid": uid}, "status": status},
            content_type="application/merge-patch+json",
            answer=False,
        )
        self._written[uid] = status
        self.writes += 1

    async def _write_mirror(self, uid: str, pod: dict[str, Any], status: dict[str, Any]) -> None:
        """Static pods show in the API as mirror pods (created if missing or stale) with their status."""
        self._static[uid] = pod
        if self._written.get(uid) == status:
            return
        namespace, name = _key(pod)
        wanted = mirror_of(pod)
        if self.node_uid() is None:
            return  # not registered yet: the mirror is owned by the Node
        wanted["metadata"]["ownerReferences"][0]["uid"] = self.node_uid()
        mirror = self.api.mirror(namespace, name)
        if mirror is not None and not _stale(mirror, pod) and _holds(mirror.get("status"), status):
            self._written[uid] = status
            return
        if mirror is not None and _stale(mirror, pod):
            await self._delete(namespace, name, mirror["metadata"]["uid"])
            mirror = None
        if mirror is None:
            try:
                mirror = await self.masters.request(
                    "POST", f"/api/v1/namespaces/{namespace}/pods", body=wanted
                )
                log.info("created mirror pod %s/%s", namespace, name)
            except errors.Conflict:
                mirror = await self.masters.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        await self.masters.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            body={"metadata": {"uid": mirror["metadata"]["uid"]}, "status": status},
            content_type="application/merge-patch+json",
        )
        self._written[uid] = status
        self.writes += 1

    async def _delete_mirror(self, pod: dict[str, Any]) -> None:
        namespace, name = _key(pod)
        mirror = self.api.mirror(namespace, name)
        if mirror is not None:
            await self._delete(namespace, name, mirror["metadata"]["uid"])
            log.info("deleted mirror pod %s/%s", namespace, name)

    async def _delete(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        with contextlib.suppress(errors.NotFound):
            await self.masters.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)

    async def _finish_deletion(self, pod: dict[str, Any]) -> None:
        namespace, name = _key(pod)
        await self._delete(namespace, name, pod["metadata"]["uid"])
        log.info("pod %s/%s: containers stopped; deleted from the API", namespace, name)
