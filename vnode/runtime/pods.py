"""The pod manager: the desired pods, their workers, the relist, and garbage collection.

It is the single owner of "which pods should run here". Pod sources (static manifests now, the API
server later) hand it their complete set with ``set_source_pods``; it writes the set to the store
*before* acting on it, starts a worker for each new pod, updates changed ones and tells removed ones
to clean up. A relist (kubelet's PLEG) lists every sandbox and container this node manages once
per period and wakes the workers whose objects changed; it also garbage-collects runtime objects of
pods nobody wants, but only once every source has delivered its first complete set, so that a
restarted vnode never mistakes a live pod for an orphan.

The HTTP layer reads from here through the ``PodLister``, ``LogLocator`` and ``StreamProvider``
protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from vnode import errors
from vnode.probes.manager import Kill, ProbeEvent
from vnode.provider.protocols import LogTarget, StreamOptions
from vnode.provider.types import ContainerState
from vnode.runtime import apiobjects, labels
from vnode.runtime.context import WorkerContext
from vnode.runtime.observation import fingerprint
from vnode.runtime.worker import PodWorker
from vnode.store import Delete, Put, Store
from vnode.store.layout import PODS, PODSTATE, PodState

log = logging.getLogger(__name__)


class PodManager:
    """Owns the desired pods and one worker task per pod; see the module docstring."""

    def __init__(
        self,
        ctx: WorkerContext,
        store: Store,
        *,
        sources: Iterable[str],
        relist_period: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.relist_period = relist_period
        self._expected_sources = set(sources)
        self.store_problem: str | None = None  # set while the store is full
        self._ready_sources: set[str] = set()
        self._workers: dict[str, PodWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._source_of: dict[str, str] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._restored: list[PodWorker] = []
        self.runtime_error: str | None = "runtime not contacted yet"
        self.relisted = asyncio.Event()
        if ctx.prober is not None:
            ctx.prober.subscribe(self._probed)

    # -- desired state -----------------------------------------------------------------------

    def restore(self) -> int:
        """Start workers for the pods in the store, as they were when vnode last ran."""
        states = dict(self.store.items(PODSTATE))
        for uid, record in self.store.items(PODS):
            self._source_of[uid] = record["source"]
            self._start_worker(record["pod"], states.get(uid))
            if record["pod"]["metadata"].get("deletionTimestamp"):
                self._workers[uid].delete()  # it was being deleted: finish that, never start it again
        self._restored = list(self._workers.values())
        return len(self._workers)

    async def set_source_pods(self, source: str, pods: list[dict[str, Any]]) -> None:
        """The complete set of pods from ``source``: add, update and remove to match it."""
        wanted = {p["metadata"]["uid"]: p for p in pods}
        ops: list[Put | Delete] = []
        for uid, pod in wanted.items():
            owner = self._source_of.get(uid)
            if owner is not None and owner != source:
                log.warning("pod uid %s from %s is already provided by %s; ignored", uid, source, owner)
                continue
            worker = self._workers.get(uid)
            if worker is None or worker.pod != pod:
                ops.append(Put(PODS, uid, {"source": source, "pod": pod}))
        gone = [uid for uid, owner in self._source_of.items() if owner == source and uid not in wanted]
        ops.extend(Delete(PODS, uid) for uid in gone)
        if ops:
            await self.store.write(ops)  # durable before acted on
        for uid, pod in wanted.items():
            worker = self._workers.get(uid)
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            if terminating and worker is None:
                self._notify(uid)  # nothing runs for it here: let listeners finish the deletion
                continue
            if self._source_of.setdefault(uid, source) != source:
                continue
            if worker is None:
                self._start_worker(pod, None)
            elif worker.pod != pod:
                worker.update(pod)
            if terminating and worker is not None and not worker.deleting:
                log.info("pod %s is being deleted; stopping it", worker.name)
                worker.delete()
        for uid in gone:
            self._source_of.pop(uid, None)
            worker = self._workers.get(uid)
            if worker is not None:
                log.info("pod %s removed from %s; stopping it", worker.name, source)
                worker.delete()
        self._ready_sources.add(source)

    def _start_worker(self, pod: dict[str, Any], state: PodState | None) -> None:
        worker = PodWorker(self.ctx, pod, state, persist=self._persist, status_changed=self._status_changed)
        uid = worker.uid
        self._workers[uid] = worker
        task = asyncio.create_task(self._run_worker(worker), name=f"pod-worker:{worker.name}")
        self._tasks[uid] = task

    async def _run_worker(self, worker: PodWorker) -> None:
        await worker.run()
        # Only a deleted pod's worker returns: forget it.
        uid = worker.uid
        if self.ctx.prober is not None:
            self.ctx.prober.forget(uid)
        if self._workers.get(uid) is worker:
            del self._workers[uid]
            self._tasks.pop(uid, None)
            await self.store.write([Delete(PODS, uid), Delete(PODSTATE, uid)])
            self._notify(uid)

    async def _persist(self, uid: str, state: PodState) -> None:
        """Keep a worker's state; a full store degrades (logged, ``store_problem`` set for the
        Node's EdgeStoreFull condition) instead of stopping the pod's sync."""
        if uid in self._workers and not self._workers[uid].deleting:
            try:
                await self.store.put(PODSTATE, uid, state)
            except errors.StoreFull as exc:
                if self.store_problem is None:
                    log.error("store full, pod state no longer kept across restarts: %s", exc)
                self.store_problem = str(exc)
                return
            if self.store_problem is not None:
                log.info("store writable again")
                self.store_problem = None

    # -- status readers ----------------------------------------------------------------------

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(uid)`` runs whenever a pod's status changes or a pod goes away."""
        self._listeners.append(callback)

    def _status_changed(self, uid: str) -> None:
        self._notify(uid)

    def _probed(self, event: ProbeEvent) -> None:
        """The prober's word: a result moved (compute the status again) or a container must go."""
        worker = self._workers.get(event.uid)
        if worker is None:
            return
        if isinstance(event, Kill):
            worker.probe_failed(event)
        else:
            worker.wake()

    def _notify(self, uid: str) -> None:
        for callback in self._listeners:
            try:
                callback(uid)
            except Exception:
                log.exception("status listener failed")

    def object_changed(self, kind: str, namespace: str, name: str) -> None:
        """A configMap or secret changed (its watch said so): wake the pods that use it."""
        for worker in self._workers.values():
            pod = worker.pod
            if pod["metadata"].get("namespace", "default") != namespace:
                continue
            if (kind, name) in apiobjects.references(pod):
                worker.wake()

    def worker(self, uid: str) -> PodWorker | None:
        return self._workers.get(uid)

    def source_of(self, uid: str) -> str | None:
        return self._source_of.get(uid)

    def status_of(self, uid: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(pod, status) of a pod that has a worker and a computed status."""
        worker = self._workers.get(uid)
        if worker is None or worker.status is None:
            return None
        return worker.pod, worker.status

    async def evict(self, uid: str, message: str) -> bool:
        """Evict the pod (see ``PodWorker.evict``); False if it has no worker or already is."""
        worker = self._workers.get(uid)
        if worker is None or worker.evicted is not None or worker.deleting:
            return False
        worker.evict(message)
        await worker.persist_now()
        return True

    def first_seen(self, source: str, annotation: str) -> dict[str, str]:
        """uid -> the ``annotation`` of each pod restored from ``source`` (a static pod's first
        sighting, which its source keeps stable across restarts)."""
        found = {}
        for uid, worker in self._workers.items():
            value = (worker.pod["metadata"].get("annotations") or {}).get(annotation)
            if self._source_of.get(uid) == source and isinstance(value, str):
                found[uid] = value
        return found

    def known_uids(self) -> list[str]:
        return list(self._workers)

    def workers(self) -> list[PodWorker]:
        return list(self._workers.values())

    def pod_with_status(self, worker: PodWorker) -> dict[str, Any]:
        pod = dict(worker.pod)
        pod["status"] = worker.status or {"phase": "Pending"}
        return pod

    def listed_pod(self, uid: str) -> dict[str, Any] | None:
        """One pod as ``list_pods`` shows it, or None when it is not listed."""
        worker = self._workers.get(uid)
        return None if worker is None or worker.deleting else self.pod_with_status(worker)

    def list_pods(self) -> list[dict[str, Any]]:
        """Every pod bound here with its current status (kubelet's ``/pods``)."""
        return [self.pod_with_status(w) for w in self._workers.values() if not w.deleting]

    def find(self, namespace: str, name: str) -> PodWorker:
        for worker in self._workers.values():
            meta = worker.pod["metadata"]
            if meta["name"] == name and meta.get("namespace", "default") == namespace and not worker.deleting:
                return worker
        raise errors.NotFound(f'pod "{name}" in namespace "{namespace}" not found')

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        """The log file of a container instance, with kubelet's errors for the cases it has none."""
        worker = self.find(namespace, pod)
        spec = worker.pod.get("spec", {})
        names = [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        if container not in names:
            raise errors.NotFound(f'container "{container}" in pod "{pod}" is not available')
        container_id = _log_container_id(worker.status or {}, container, pod, previous)
        instance = next(
            (c for c in worker.last_observed.containers.get(container, []) if c.id == container_id), None
        )
        if instance is None or not instance.log_path:
            raise errors.InvalidInput(f'container "{container}" in pod "{pod}" has no log yet')
        cri = self.ctx.cri

        async def is_running() -> bool:
            try:
                status = await cri.container_status(container_id)
            except errors.NotFound:
                return False
            except errors.Unavailable:
                return True  # the runtime is restarting: keep following
            return status.state in (ContainerState.RUNNING, ContainerState.CREATED)

        return LogTarget(path=instance.log_path, is_running=is_running)

    # -- streams (StreamProvider) ------------------------------------------------------------------

    def _running_container(self, namespace: str, pod: str, uid: str | None, container: str) -> str:
        """The ID of the running instance of ``container``, with kubelet's 404 for unknown names."""
        worker = self.find(namespace, pod)
        if uid is not None and worker.pod["metadata"].get("uid") != uid:
            raise errors.NotFound(f'pod "{pod}" with UID {uid} not found')
        spec = worker.pod.get("spec", {})
        names = [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        if container not in names:
            raise errors.NotFound(f'container "{container}" in pod "{pod}" not found')
        instance = worker.last_observed.current(container)
        if instance is None or instance.state != ContainerState.RUNNING:
            raise errors.InvalidInput(f'container "{container}" in pod "{pod}" is not running')
        return instance.id

    async def exec_url(
        self,
        namespace: str,
        pod: str,
        uid: str | None,
        container: str,
        command: list[str],
        options: StreamOptions,
    ) -> str:
        cid = self._running_container(namespace, pod, uid, container)
        return await self.ctx.cri.exec_url(
            cid, command, tty=options.tty, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr
        )

    async def attach_url(
        self, namespace: str, pod: str, uid: str | None, container: str, options: StreamOptions
    ) -> str:
        cid = self._running_container(namespace, pod, uid, container)
        return await self.ctx.cri.attach_url(
            cid, tty=options.tty, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr
        )

    async def port_forward_url(self, namespace: str, pod: str, uid: str | None, ports: list[int]) -> str:
        worker = self.find(namespace, pod)
        if uid is not None and worker.pod["metadata"].get("uid") != uid:
            raise errors.NotFound("pod not found")  # kubelet's text for a UID mismatch
        sandbox = worker.last_observed.sandbox
        if sandbox is None or not sandbox.ready:
            raise errors.InvalidInput(f'pod "{pod}" has no running sandbox')
        return await self.ctx.cri.port_forward_url(sandbox.id, ports)

    async def run_sync(
        self, namespace: str, pod: str, uid: str | None, container: str, command: list[str]
    ) -> tuple[bytes, bytes, int]:
        cid = self._running_container(namespace, pod, uid, container)
        return await self.ctx.cri.exec_sync(cid, command)

    # -- the relist --------------------------------------------------------------------------

    async def relist(self) -> None:
        """List everything this node manages once; wake changed workers; collect orphans."""
        selector = {labels.NODE_LABEL: self.ctx.node_name}
        sandboxes = await self.ctx.cri.list_pod_sandboxes(selector)
        containers = await self.ctx.cri.list_containers(selector)
        by_uid_sb: dict[str, list[Any]] = {}
        by_uid_c: dict[str, list[Any]] = {}
        for s in sandboxes:
            by_uid_sb.setdefault(s.labels.get(labels.POD_UID, ""), []).append(s)
        for c in containers:
            by_uid_c.setdefault(c.labels.get(labels.POD_UID, ""), []).append(c)
        for uid, worker in list(self._workers.items()):
            worker.observe_listing(fingerprint(by_uid_sb.get(uid, []), by_uid_c.get(uid, [])))
        if self._expected_sources <= self._ready_sources:
            orphans = (set(by_uid_sb) | set(by_uid_c)) - set(self._workers)
            for uid in orphans:
                await self._remove_orphan(uid, by_uid_sb.get(uid, []), by_uid_c.get(uid, []))

    async def _remove_orphan(self, uid: str, sandboxes: list[Any], containers: list[Any]) -> None:
        log.info("removing runtime objects of pod uid %s, which no source wants", uid or "<none>")
        cri = self.ctx.cri
        for c in containers:
            with contextlib.suppress(errors.NotFound):
                await cri.stop_container(c.id, 0)
                await cri.remove_container(c.id)
        for s in sandboxes:
            with contextlib.suppress(errors.NotFound):
                await cri.stop_pod_sandbox(s.id)
                await cri.remove_pod_sandbox(s.id)
        if self.ctx.cgroups is not None and uid:
            await self.ctx.cgroups.remove(uid)
        with contextlib.suppress(errors.VnodeError):
            await asyncio.to_thread(self.ctx.volumes.cleanup, uid)

    async def run(self) -> None:
        """The relist loop; the runtime's health is whether the last relist worked."""
        while True:
            try:
                await self.relist()
                was_down, self.runtime_error = self.runtime_error is not None, None
                if was_down:
                    log.info("container runtime is reachable at %s", self.ctx.cri.endpoint)
                    for worker in self._workers.values():
                        worker.wake()
                    with contextlib.suppress(errors.VnodeError):
                        await self.ctx.cri.version()  # kept by the client for the Node's nodeInfo
            except errors.VnodeError as exc:
                if self.runtime_error is None or self.runtime_error != str(exc):
                    log.warning("container runtime unhealthy: %s", exc)
                self.runtime_error = str(exc)
            self.relisted.set()
            await asyncio.sleep(self.relist_period)

    async def check_runtime(self) -> None:
        """A health check: raises while the runtime can't be listed."""
        if self.runtime_error is not None:
            raise errors.Unavailable(self.runtime_error)

    async def check_sync(self) -> None:
        """A health check: the runtime is reachable and every pod restored from the store has been
        synced against it once (its running containers re-adopted) since vnode started."""
        await self.check_runtime()
        pending = [w for w in self._restored if not w.synced.is_set()]
        if pending:
            raise errors.Unavailable(f"{len(pending)} restored pod(s) not re-adopted yet")
        self._restored = []

    async def stop(self) -> None:
        """Cancel every worker; the containers keep running (restarting vnode never kills pods)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def _log_container_id(status: dict[str, Any], container: str, pod: str, previous: bool) -> str:
    """Which instance's log to serve, decided from the pod status as kubelet decides it."""
    statuses = (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
    entry = next((s for s in statuses if s.get("name") == container), None)
    if entry is None:
        raise errors.InvalidInput(
            f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
        )
    state, last = entry.get("state") or {}, (entry.get("lastState") or {}).get("terminated")
    if previous:
        if not last or not last.get("containerID"):
            raise errors.InvalidInput(f'previous terminated container "{container}" in pod "{pod}" not found')
        cid = str(last["containerID"])
    elif "running" in state:
        cid = str(entry.get("containerID", ""))
    elif "terminated" in state:
        cid = str(state["terminated"].get("containerID") or entry.get("containerID", ""))
    elif last and last.get("containerID"):
        cid = str(last["containerID"])
    else:
        reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
        if reason in ("ErrImagePull", "ImagePullBackOff"):
            reason = "image can't be pulled"
        raise errors.InvalidInput(f'container "{container}" in pod "{pod}" is waiting to start: {reason}')
    return cid.split("://", 1)[-1]
